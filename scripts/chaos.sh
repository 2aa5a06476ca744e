#!/usr/bin/env bash
# The long chaos run (docs/distributed.md, "Chaos"): KILLS runs under `mpirun -np 2`, each resuming
# from the last committed sharded checkpoint, saving after every step, with a random rank
# SIGKILLed after a random delay in [0, MAX_MS) ms (in a step, a save or the load); then a run
# without kills to STEPS; then the committed set is compared, bit for bit, with the uninterrupted
# run. The short version is the ctest "mpi: chaos …" (5 kills, 16 steps).
#
#   scripts/chaos.sh                      # defaults: 300 kills, 2000 steps, MAX_MS 3000: > 20 min
#   KILLS=30 STEPS=200 scripts/chaos.sh   # a few minutes
#
# Needs a build with MPI: cmake --build build --target test_mpi. BUILD (default: build) is the
# build directory; MPIRUN (default: mpirun -np 2 --oversubscribe, plus --allow-run-as-root as root).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$here/build}
KILLS=${KILLS:-300}
STEPS=${STEPS:-2000}
MAX_MS=${MAX_MS:-3000}
LIMIT=${LIMIT:-1200}   # seconds any one mpirun may take (the last, unkilled run trains what is left)
if [[ -z "${MPIRUN:-}" ]]; then
  MPIRUN="mpirun|-np|2|--oversubscribe"
  [[ $(id -u) == 0 ]] && MPIRUN="$MPIRUN|--allow-run-as-root"
fi
test_mpi=$BUILD/tests/mpi/test_mpi
[[ -x $test_mpi ]] || { echo "chaos.sh: $test_mpi not found (build the test_mpi target with MPI)" >&2; exit 2; }
start=$(date +%s)
OMP_NUM_THREADS=1 cmake -DMPIRUN="$MPIRUN" -DTEST="$test_mpi" -DWORK="$BUILD/chaos_long" -DKILLS="$KILLS" -DMAX_MS="$MAX_MS" \
  -DSTEPS="$STEPS" -DLIMIT="$LIMIT" -P "$here/tests/mpi/chaos_test.cmake" 2>&1 | tee "$BUILD/chaos_long.log"
status=${PIPESTATUS[0]}
echo "chaos.sh: $KILLS runs, $STEPS steps, status $status, $(( $(date +%s) - start )) s;" \
  "kills during steps: $(grep -c 'during a step' "$BUILD/chaos_long.log" || true)," \
  "saves: $(grep -c 'during a save' "$BUILD/chaos_long.log" || true), loads: $(grep -c 'during the load' "$BUILD/chaos_long.log" || true)"
exit "$status"
