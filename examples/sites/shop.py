# The example site: what `python examples/run.py` serves.
#
# edgeproxy is configured in plain Python.  `twistd edgeproxy --config DIR` loads
# every *.py file in DIR (in name order; files starting with "_" are skipped),
# and each file lists its sites in a module-level `virtual_hosts`.  Every object
# below checks its arguments when it is built, so a typo fails at startup with
# the file and line, never at request time.  Check a config without starting
# anything with:
#
#     twistd edgeproxy --config examples/sites --check
#
# The full reference is docs/configuration.md.

from edgeproxy.config import Cache, Cluster, RateLimit, Route, Split, VirtualHost

# A Cluster is a named group of upstream servers ("host:port").  The proxy keeps
# pooled connections to them and spreads requests over the endpoints.  The name
# shows up in logs and in the admin /status page.
#
# These four addresses are served by examples/demo_backends.py, which answers
# every request with the name and port of the backend that got it.
api = Cluster("api", endpoints=["127.0.0.1:9001", "127.0.0.1:9002"])
web_v1 = Cluster("web-v1", endpoints=["127.0.0.1:9101"])
web_v2 = Cluster("web-v2", endpoints=["127.0.0.1:9102"])

virtual_hosts = [
    VirtualHost(
        # The names this site answers to, matched against the request's Host
        # header (the port is ignored).  "*.shop.example" matches exactly one
        # extra label (www.shop.example, not shop.example itself, not
        # a.b.shop.example).  "localhost" and "127.0.0.1" are here so that
        # `curl -k https://localhost:8443/` works without editing /etc/hosts; a
        # real site would list only its own names.
        #
        # The TLS certificate is chosen separately, by SNI, from the --certs
        # directory; run.py puts a self-signed one for all of these names there.
        ["shop.example", "*.shop.example", "localhost", "127.0.0.1"],
        routes=[
            # The longest matching path prefix wins, whatever the order here.
            # "/api/" matches /api/ and /api/hello but not /api (that falls
            # through to "/").  The path is forwarded unchanged; pass
            # strip_prefix=True to send /api/hello upstream as /hello.
            #
            # Each client address may send 20 requests at once and 10 a second
            # after that; past it, 429 with Retry-After (docs/security.md).
            # The buckets are in this process's memory, or in a Redis every
            # proxy shares with --rate-limit-store redis://HOST:PORT.
            Route("/api/", api, rate_limit=RateLimit(rate=10.0, burst=20)),
            # Static files, cached at the proxy (docs/caching.md): what the
            # backend allows to be kept (here "Cache-Control: public,
            # max-age=60") is answered from memory without reaching it, at
            # most 64 MiB of it; the Cache-Status header says what happened.
            Route("/static/", web_v1, cache=Cache(max_bytes=64 * 2**20)),
            # Uploads stream through as they arrive instead of being spooled
            # first (nginx's proxy_request_buffering off): the backend sees
            # the first bytes at once, and a slow backend slows the client
            # down rather than filling the proxy (docs/http.md).  Up to 1 GiB.
            Route("/upload/", api, request_buffering=False, max_body_size=2**30),
            # Every route also speaks HTTP/2 to clients that offer it (ALPN h2)
            # and tunnels WebSocket upgrades (websocket=False refuses them).
            #
            # Everything else: a canary split.  Each request picks web-v1 about
            # 90% of the time and web-v2 about 10% (weights are relative; a
            # weight of 0 takes a cluster out, e.g. for a blue/green switch).
            Route("/", Split({web_v1: 90, web_v2: 10})),
        ],
    ),
]
