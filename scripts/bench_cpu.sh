#!/usr/bin/env bash
# The one command for the CPU log-prob benchmarks (issue #6): builds bench_logprob (-march=native),
# runs it (generic oracle, fast path, triad/read bandwidth, dft_step), runs PyTorch CPU on the same
# shapes and threads, and prints the side-by-side table; a full run also rewrites bench/RESULTS_cpu.md
# (the table followed by bench/RESULTS_cpu_notes.md).
#   scripts/bench_cpu.sh                 full run (~5-10 min, needs ~17 GiB free for PyTorch's largest shape)
#   DFTUNE_BENCH_QUICK=1 scripts/bench_cpu.sh   one small shape, to check the plumbing
#   DFTUNE_BENCH_BUILD=dir               build directory (default build-bench)
#   DFTUNE_BENCH_THREADS=n               the multi-thread count (default: all cores)
#   DFTUNE_BENCH_FORWARD=1 scripts/bench_cpu.sh   only the float forward on one thread, fast path and
#                                        PyTorch shape by shape, on the six shapes: G logits/s and the ratio
#                                        (prints a table; leaves bench/RESULTS_cpu.md alone)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${DFTUNE_BENCH_BUILD:-build-bench}
py=/usr/bin/python3
threads=${DFTUNE_BENCH_THREADS:-$(nproc)}
export DFTUNE_BENCH_THREADS=$threads
# On a shared machine, OpenMP threads spinning at a barrier steal the time slices of the thread
# still working (measured here: 2-thread fused 22 ms spinning vs 9.7 ms passive, same shape);
# applies to bench_logprob and PyTorch alike. Set OMP_WAIT_POLICY=active on a dedicated machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

if ! "$py" -c "import torch" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y python3-torch
fi
# glibc unmaps every freed tensor above 32 MiB, and the next op faults its pages in again, which
# on a VM costs more than the arithmetic (x + 1 on 64 MiB: ~250 ms vs ~3.5 ms). PyTorch gets
# jemalloc with freed pages kept (on huge pages, as bench_logprob's buffers are), as a long-running
# trainer would see them.
jemalloc=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [ ! -e "$jemalloc" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y libjemalloc2; fi

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDFTUNE_NATIVE=ON >/dev/null
cmake --build "$build" --target bench_logprob -j "$(nproc)" >/dev/null
out="$build/bench_results"
mkdir -p "$out"

# Shape by shape: the triad, the C++ benchmarks, then PyTorch, so that every ratio compares
# numbers taken within a minute of each other under the same load.
if [ "${DFTUNE_BENCH_QUICK:-0}" != 0 ]; then shapes="32000:512"; min_time=0.1; else
  shapes="32000:512 32000:4096 128256:512 128256:4096 256000:512 256000:4096"; min_time=0.3; fi
rm -f "$out"/cpp_*.json "$out"/torch_*.json
if [ "${DFTUNE_BENCH_FORWARD:-0}" != 0 ]; then
  for shape in $shapes; do
    V=${shape%:*} N=${shape#*:}
    echo "== V=$V N=$N  load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$build/bench/bench_logprob" --benchmark_filter="^logprob/fast/float/forward/V:$V/N:$N/threads:1/" \
      --benchmark_out="$out/cpp_${V}_$N.json" --benchmark_out_format=json >&2
    LD_PRELOAD=$jemalloc MALLOC_CONF=thp:always,dirty_decay_ms:-1,muzzy_decay_ms:-1 \
      "$py" bench/torch_logprob.py --vocabs "$V" --rows "$N" --threads 1 --ops forward --min-time $min_time \
      >"$out/torch_${V}_$N.json"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  done
  "$py" - "$out" $shapes <<'PY'
import json, sys
out, shapes = sys.argv[1], sys.argv[2:]
print("| V | N | fast ms (wall) | fast ms (CPU) | G logits/s (wall) | G logits/s (CPU) | torch ms (wall) | torch G logits/s | fast ÷ torch (wall) |")
print("|---|---|---|---|---|---|---|---|---|")
for s in shapes:
    V, N = map(int, s.split(":"))
    runs = [b for b in json.load(open(f"{out}/cpp_{V}_{N}.json"))["benchmarks"] if b.get("run_type") == "iteration"]
    wall, cpu = min(b["real_time"] for b in runs), min(b["cpu_time"] for b in runs)
    t = 1e3 * next(r for r in json.load(open(f"{out}/torch_{V}_{N}.json"))["results"] if r.get("threads") == 1)["forward"]
    g = lambda ms: N * V / ms / 1e6
    print(f"| {V} | {N} | {wall:.3g} | {cpu:.3g} | {g(wall):.2f} | {g(cpu):.2f} | {t:.3g} | {g(t):.2f} | {t / wall:.2f}× |")
PY
  exit 0
fi
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for shape in $shapes; do
  V=${shape%:*} N=${shape#*:}
  echo "== V=$V N=$N" >&2
  "$build/bench/bench_logprob" --benchmark_filter="^bw/|/V:$V/N:$N/" \
    --benchmark_out="$out/cpp_${V}_$N.json" --benchmark_out_format=json >&2
  LD_PRELOAD=$jemalloc MALLOC_CONF=thp:always,dirty_decay_ms:-1,muzzy_decay_ms:-1 \
    "$py" bench/torch_logprob.py --vocabs "$V" --rows "$N" --threads "1,$threads" --min-time $min_time \
    >"$out/torch_${V}_$N.json"
done
"$build/bench/bench_logprob" --benchmark_filter="^bw/|^ceiling/|^dft/" \
  --benchmark_out="$out/cpp_misc.json" --benchmark_out_format=json >&2
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
"$py" bench/report.py --cpp "$out"/cpp_*.json --torch "$out"/torch_*.json --header \
  "# CPU log-prob reductions: generic vs fast path vs PyTorch" "" \
  "Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`scripts/bench_cpu.sh\` on $cpu, $(nproc) cores, $(grep -m1 MemTotal /proc/meminfo | awk '{printf "%.0f GiB", $2/1048576}'), g++ $(g++ -dumpfullversion), -O3 -march=native; PyTorch $("$py" -c 'import torch; print(torch.__version__)') (Debian python3-torch, jemalloc)." \
  "Load average before / after: $load_before / $load_after (other jobs share this machine; see the notes in bench/RESULTS_cpu.md). OMP_WAIT_POLICY=$OMP_WAIT_POLICY." \
  | tee "$out/table.md"
# A full run rewrites bench/RESULTS_cpu.md: this table, then the analysis in bench/RESULTS_cpu_notes.md.
if [ "${DFTUNE_BENCH_QUICK:-0}" = 0 ]; then
  { cat "$out/table.md"; echo; cat bench/RESULTS_cpu_notes.md; } >bench/RESULTS_cpu.md
fi
