"""
The application layer: the command line (:mod:`.tap`, what the ``twistd``
plugin loads), the service that assembles every other layer
(:mod:`.service`), the fast paths applied at start (:mod:`.fastpaths`), the
``--check`` semantic checks (:mod:`.checks`), and the worker supervisor with
the worker's main (:mod:`.workers`).  The only layer that touches the global
reactor.  May import: everything.
"""
