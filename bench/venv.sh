#!/usr/bin/env bash
# Make .venv-bench: edgeproxy installed on the distribution's CPython, for the
# benchmarks.  Debian's python3 is built with profile-guided and link-time
# optimisation and linked statically; a default pyenv build (first in PATH on
# the reference VM) is not, and runs edgeproxy's hot path ~15-25% slower (see
# bench/README.md).  Usage: bash bench/venv.sh [PYTHON]; then run the
# benchmarks with .venv-bench/bin/python bench/compare.py (and so on).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/usr/bin/python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bench/venv.sh: $python is not Python 3.11+; give one as the first argument" >&2
    exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    # Debian splits venv/ensurepip out of python3.
    apt-get install -y -qq python3-venv >/dev/null
fi
"$python" -m venv .venv-bench
.venv-bench/bin/pip install --quiet --upgrade pip
.venv-bench/bin/pip install --quiet -e .
.venv-bench/bin/python - <<'PY'
import sys
sys.path.insert(0, "bench")
import _common
print("benchmark interpreter:", _common.interpreter_build())
PY
