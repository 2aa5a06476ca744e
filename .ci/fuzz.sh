#!/usr/bin/env bash
# CI: builds the libFuzzer targets of tests/fuzz with Debian's clang (ASan + UBSan), replays every
# saved crash in tests/fuzz/regressions/<target>/, then fuzzes each target from its seeds for
# FUZZ_SECONDS (default 60; fuzz_weights, a small surface, a third of it). A crash, leak or sanitizer report fails the job and leaves the
# input in build-fuzz/artifacts/ — add it to tests/fuzz/regressions/<target>/ with the fix
# (tests/test_fuzz_regressions.cpp replays that folder in the ordinary test suite too).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}

pkgs=(cmake make clang-14 libclang-rt-14-dev libeigen3-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -ne 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "fuzz.sh: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S tests/fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build-fuzz -j2

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
mkdir -p build-fuzz/artifacts
status=0
for t in fuzz_checkpoint fuzz_objectives fuzz_weights fuzz_model; do
  corpus=build-fuzz/corpus/$t
  mkdir -p "$corpus"
  mapfile -t saved < <(find tests/fuzz/regressions/$t -maxdepth 1 -type f ! -name '.*' 2>/dev/null | sort)
  if [ ${#saved[@]} -gt 0 ]; then
    echo "== $t: replaying ${#saved[@]} input(s) of tests/fuzz/regressions/$t"
    build-fuzz/$t "${saved[@]}" >build-fuzz/$t.replay.log 2>&1 || { status=1; tail -40 build-fuzz/$t.replay.log; }
  fi
  t_seconds=$seconds
  [ "$t" = fuzz_weights ] && t_seconds=$(( (seconds + 2) / 3 ))
  [ "$t" = fuzz_model ] && t_seconds=$(( seconds < 15 ? seconds : 15 ))  # sampling + TinyLm config: a small surface
  echo "== $t: fuzzing for ${t_seconds}s"
  DFTUNE_FUZZ_WRITE_SEEDS=$corpus build-fuzz/$t -runs=0 "$corpus" >/dev/null 2>&1 || true
  build-fuzz/$t -max_total_time="$t_seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix=build-fuzz/artifacts/$t- "$corpus" 2>build-fuzz/$t.log || { status=1; tail -60 build-fuzz/$t.log; }
  grep -E "^Done" build-fuzz/$t.log || true
done
[ $status -eq 0 ] && echo "fuzz: no findings" || echo "fuzz: FINDINGS (see above and build-fuzz/artifacts/)" >&2
exit $status
