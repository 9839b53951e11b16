# Kept tiny on purpose: twistd imports every plugin module to list them, so
# nothing heavy may be imported here.  Note there is no __init__.py in
# twisted/plugins/: that directory is a namespace Twisted extends.
from twisted.application.service import ServiceMaker

edgeproxy = ServiceMaker(
    "edgeproxy",
    "edgeproxy.app.tap",
    "TLS-terminating reverse proxy: SNI certificates from a directory, "
    "host/path routing to pooled upstream clusters.",
    "edgeproxy",
)
