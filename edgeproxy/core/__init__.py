"""
The pure core: values in, values out.  Hostname rules, header rewriting,
HTTP/1.1 framing decisions, retry decisions, endpoint selection algorithms,
the certificate index (SNI names -> certificates), the error and outcome
types that carry an HTTP meaning.

No Twisted, no OpenSSL, no cryptography, no reactor, no I/O, no module-level
mutable state; time and randomness are arguments.  May import: nothing else of edgeproxy.
"""
