"""
Request paths edgeproxy refuses before routing: a path with a dot segment
(``.`` or ``..``), written literally or percent-encoded (``%2e``), with
``/`` or an encoded ``%2f`` between segments.  Such a path cannot climb out
of its route at edgeproxy, which matches prefixes byte for byte, but it can
at a backend that normalises paths after edgeproxy chose the route (a
``/public/..%2fadmin`` routed as public).  Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import re

__all__ = ["has_dot_segment"]

# A segment of one or two dots, each literal or %2e, between separators
# (/ or %2f) or the path's ends.  Case-insensitive for the hex digits.
_DOT_SEGMENT = re.compile(rb"(?:^|/|%2f)(?:\.|%2e){1,2}(?:$|/|%2f)", re.IGNORECASE)


def has_dot_segment(path: bytes) -> bool:
    """Does ``path`` (the request-target without its query) hold a ``.`` or
    ``..`` segment, literal or percent-encoded?  Cheap for the usual path:
    only a path with ``/.`` or ``%2`` in it is searched."""
    if b"/." not in path and b"%2" not in path and not path.startswith(b"."):
        return False
    return _DOT_SEGMENT.search(path) is not None
