"""
The operations layer: what an operator sees.  The access log
(:mod:`.accesslog`), the Prometheus metrics (:mod:`.metrics`), the admin
listener's resources (:mod:`.admin`) and its HTML page (:mod:`.adminpage`).

Read-only views of the layers below; what it needs from the running service
it takes through a protocol (:class:`.admin.ServiceView`), never by importing
:mod:`edgeproxy.app`.
"""
