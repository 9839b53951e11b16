"""
``twistd edgeproxy``: the plugin's module.  Its options are
:class:`edgeproxy.app.options.Options`; the service they describe is made here,
a worker supervisor when ``--workers`` is above 1, else the proxy itself.
"""

from __future__ import annotations

from twisted.application.service import IService

from edgeproxy.app.options import Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    if options["settings"].workers > 1:
        # The supervisor binds the listeners and runs workers; it imports
        # nothing of the proxy itself (edgeproxy.app.workers).
        from edgeproxy.app.workers import make_supervisor

        return make_supervisor(options["settings"], options.argv, reactor)

    from edgeproxy.app.service import make_service
    from edgeproxy.core.errors import ConfigError

    try:
        return make_service(options["settings"], reactor, handle_sighup=True)
    except ConfigError as e:
        raise SystemExit("edgeproxy: configuration errors:\n" + str(e)) from None
