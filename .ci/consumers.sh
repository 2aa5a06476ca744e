#!/usr/bin/env bash
# CI: the three consumer projects of tests/consumers — find_package(dftune CONFIG) after an
# install, add_subdirectory of the source tree, and every installed public header compiled alone
# without nvcc — each configured, built and (the first two) run, in build-consumers/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build-consumers
prefix=$out/prefix

cmake/install_deps.sh test
rm -rf "$out"

echo "== install dftune into $prefix"
cmake -S . -B "$out/dftune" -DCMAKE_INSTALL_PREFIX="$prefix" -DDFTUNE_BUILD_TESTS=OFF -DDFTUNE_BUILD_EXAMPLES=OFF \
  -DDFTUNE_BUILD_BENCH=OFF -DDFTUNE_BUILD_PYTHON=OFF -DDFTUNE_ENABLE_CUDA=OFF >/dev/null
cmake --build "$out/dftune"
cmake --install "$out/dftune" >/dev/null
test -f "$prefix/share/cmake/dftune/dftuneConfig.cmake"

echo "== consumer: find_package(dftune CONFIG)"
cmake -S tests/consumers/install -B "$out/install" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$out/install" -j2
"$out/install/consumer"

echo "== consumer: add_subdirectory"
cmake -S tests/consumers/subdirectory -B "$out/subdirectory" -DDFTUNE_ENABLE_CUDA=OFF >/dev/null
cmake --build "$out/subdirectory" -j2
"$out/subdirectory/consumer"

echo "== consumer: every installed header alone, no nvcc"
# Release: the optimiser's flow warnings (-Wmaybe-uninitialized, ...) as in the source tree's
# dftune_header_check, which .ci/run leaves to this check.
cmake -S tests/consumers/headers -B "$out/headers" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release
cmake --build "$out/headers" -j2
echo "consumers: all passed"
