"""
Request paths edgeproxy refuses before routing: a path with a dot segment
(``.`` or ``..``), written literally or percent-encoded (``%2e``), with
``/``, ``\\`` or their encodings ``%2f``, ``%5c`` between segments, and with
or without path parameters after it (``..;x``, ``..%3b``: Tomcat, Jetty and
Spring drop them and then resolve the ``..``; Windows servers split on a
backslash).  Such a path cannot climb out of its route at edgeproxy, which
matches prefixes byte for byte, but it can at a backend that normalises
paths after edgeproxy chose the route (a ``/public/..%2fadmin`` or
``/public/..;/admin`` routed as public).  Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import re

__all__ = ["has_dot_segment"]

# A segment of one or two dots, each literal or %2e, between separators
# (/, \, %2f, %5c) or the path's ends, perhaps with parameters (; or %3b)
# after it.  Case-insensitive for the hex digits.
_DOT_SEGMENT = re.compile(
    rb"(?:^|/|\\|%2f|%5c)(?:\.|%2e){1,2}(?:$|/|\\|%2f|%5c|;|%3b)", re.IGNORECASE
)


def has_dot_segment(path: bytes) -> bool:
    """Does ``path`` (the request-target without its query) hold a ``.`` or
    ``..`` segment, literal or percent-encoded?  Cheap for the usual path:
    only a path with ``/.``, ``\\``, ``%2`` or ``%5`` in it is searched."""
    if (
        b"/." not in path
        and b"%2" not in path
        and b"\\" not in path
        and b"%5" not in path
        and not path.startswith(b".")
    ):
        return False
    return _DOT_SEGMENT.search(path) is not None
