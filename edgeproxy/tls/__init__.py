"""
The TLS layer: certificates loaded with their OpenSSL contexts and indexed
by name (the pure :mod:`edgeproxy.core.certindex` over them), the SNI context
switch and the ``--tls-profile`` settings (:mod:`.certificates`), the
certificate directory watcher (:mod:`.certwatch`), edgeproxy's memory-BIO TLS
server layer (:mod:`.server`) and the development certificate (:mod:`.devcert`).

May import: :mod:`edgeproxy.core`, :mod:`edgeproxy.net`.
"""
