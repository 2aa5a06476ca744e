#!/usr/bin/env bash
# CI: every test under AddressSanitizer + UndefinedBehaviorSanitizer (g++, -O1, any report fatal),
# in build-asan. Installs its Debian packages if missing; exits non-zero on any failure or report.
set -euo pipefail
cd "$(dirname "$0")/.."

cmake/install_deps.sh test

# MPI off: Open MPI's own allocations would trip LeakSanitizer; the data-parallel logic still runs
# under the sanitizers in test_distributed and test_sharded_checkpoint (a world of threads).
flags="-O1 -g1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DDFTUNE_BUILD_TESTS=ON -DDFTUNE_BUILD_EXAMPLES=OFF -DDFTUNE_BUILD_BENCH=OFF -DDFTUNE_ENABLE_CUDA=OFF \
  -DDFTUNE_ENABLE_MPI=OFF \
  -DDFTUNE_NATIVE=OFF `# the portable build (baseline ISA; the kernels dispatch at run time), .ci/run the native one` \
  -DDFTUNE_BUILD_PYTHON=OFF  # an ASan-built module cannot load into Debian's uninstrumented python3
# The test executables only (every one ctest will look for): the header check compiles nothing that runs.
cmake --build build-asan -j2 --target dftune_tests

# detect_leaks: OpenMP's thread pool is reclaimed at exit, not before; halt on the first report.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=2
ctest --test-dir build-asan -j2 --output-on-failure
