#!/usr/bin/env bash
# The second build route of dftune_torch, torch's own (setup.py, torch.utils.cpp_extension):
#   pip install --no-build-isolation ./python
# into a throw-away virtual environment that sees the system's torch, then python/tests against
# that installed package (not build/python). Run by .ci/run; ≈ 1 min of CPU (one translation unit).
#   python/test_pip_install.sh [python3]     (default /usr/bin/python3; it must import torch)
set -euo pipefail
cd "$(dirname "$0")"
py=${1:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -rf build dftune_torch.egg-info' EXIT
"$py" -m venv --system-site-packages --without-pip "$tmp/venv"
# The venv has no pip of its own: the system's pip, run by the venv's interpreter, installs into it.
MAX_JOBS=2 "$tmp/venv/bin/python" -m pip install --no-build-isolation --no-deps --no-index -q .
cd tests
# From an empty PYTHONPATH and another directory: the installed package, not python/dftune_torch.
PYTHONPATH= OMP_NUM_THREADS=2 "$tmp/venv/bin/python" -c \
  "import dftune_torch, sys; p = dftune_torch.__file__; print('dftune_torch', dftune_torch.__version__, 'from', p); sys.exit(0 if p.startswith('$tmp') else 1)"
PYTHONPATH= OMP_NUM_THREADS=2 "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider .
