#!/usr/bin/env bash
# Installs, from Debian's packages, what a dftune job needs and the machine lacks; idempotent.
#   cmake/install_deps.sh test    compiler toolchain + doctest (+ Eigen, xtensor, benchmark, Open MPI for the mpirun
#                                 tests, and PyTorch for examples/libtorch and the extension python/: libtorch,
#                                 pybind11, Debian's python3-torch and pytest; nlohmann-json, PCRE2, ICU for dftune::hf)
#   cmake/install_deps.sh demo    what the demo needs (+ gnuplot for its plot)
set -euo pipefail
job=${1:-test}
pkgs=(cmake g++ make libeigen3-dev libxtensor-dev doctest-dev libbenchmark-dev)
case "$job" in
  test) pkgs+=(libopenmpi-dev openmpi-bin libtorch-dev pybind11-dev python3-torch python3-pytest
              nlohmann-json3-dev libpcre2-dev libicu-dev pkg-config) ;;  # the last four: dftune::hf
  demo) pkgs+=(gnuplot-nox) ;;
  *) echo "install_deps.sh: job '$job' is not known; expected 'test' or 'demo'" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install_deps.sh: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
