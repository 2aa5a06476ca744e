#!/usr/bin/env bash
# The one command for the fused linear + log-prob head's benchmark (issue #13): builds
# bench_fused_linear once per GEMM library (Eigen; OpenBLAS and BLIS, installed from Debian if
# missing), runs, shape by shape and one process per measurement, the fused head (forward;
# forward_backward in one pass; forward then backward with recomputation), the three bare GEMMs of
# the same library, the materialised path, a Cut Cross-Entropy-style forward and PyTorch, each with
# its measured peak extra memory, then prints the table; a full run rewrites
# bench/RESULTS_fused_linear.md.
#   scripts/bench_fused_linear.sh                 full run (~12 min on 2 cores with the build; ~10 GiB free for PyTorch at N=4096, V=128256)
#   DFTUNE_BENCH_QUICK=1 scripts/bench_fused_linear.sh   one small shape, one timed call each: checks the plumbing
#   DFTUNE_BENCH_BUILD=dir               build directory (default build-bench)
#   DFTUNE_BENCH_THREADS=n               threads (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${DFTUNE_BENCH_BUILD:-build-bench}
py=/usr/bin/python3
threads=${DFTUNE_BENCH_THREADS:-$(nproc)}
quick=${DFTUNE_BENCH_QUICK:-0}
# Spinning OpenMP threads steal the time slices of the one still working on a shared machine
# (scripts/bench_cpu.sh measured 2.3x); set OMP_WAIT_POLICY=active on a dedicated one.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

missing=()
"$py" -c "import torch" 2>/dev/null || missing+=(python3-torch)
for p in libopenblas-openmp-dev libblis-openmp-dev libdnnl-dev libjemalloc2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; fi
# PyTorch gets jemalloc with freed pages kept, as in scripts/bench_cpu.sh: glibc unmaps every freed
# tensor above 32 MiB and the next step faults its pages in again (the C++ paths reuse their buffers).
jemalloc=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDFTUNE_NATIVE=ON -DDFTUNE_GEMM=eigen >/dev/null
cmake --build "$build" -j "$(nproc)" --target bench_fused_linear bench_fused_linear_openblas bench_fused_linear_blis bench_fused_linear_onednn >/dev/null
out="$build/bench_fused_linear"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

# shapes d:V:N:reps (timed calls after the first, which measures the memory and warms up)
if [ "$quick" != 0 ]; then
  shapes="256:8000:512:1"; sweep=""
else
  shapes="512:32000:1024:2 512:128256:1024:2 2048:32000:1024:2 512:128256:4096:1"
  sweep="512:32000:1024:64,128,512,1024 512:128256:1024:64,128,512"
fi

run() {  # binary, then flags
  local bin=$1; shift
  echo "  $(basename "$bin") $*" >&2
  "$build/bench/$bin" --threads "$threads" "$@" >>"$results"
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for shape in $shapes; do
  IFS=: read -r d V N reps <<<"$shape"
  echo "== d=$d V=$V N=$N" >&2
  common=(--d "$d" --V "$V" --N "$N" --reps "$reps" --min-time 0)
  for m in gemms fused_fb fused_2p fused_fwd cce_fwd materialised; do run bench_fused_linear --method $m "${common[@]}"; done
  for m in fused_fb fused_2p; do run bench_fused_linear --method $m --masked 0.5 "${common[@]}"; done
  for m in gemms fused_fb; do run bench_fused_linear_openblas --method $m "${common[@]}"; done
  run bench_fused_linear_openblas --method fused_fb --masked 0.5 "${common[@]}"
  # oneDNN: the project's default GEMM (DFTUNE_GEMM=auto, docs/performance_cpu.md)
  for m in gemms fused_fb; do run bench_fused_linear_onednn --method $m "${common[@]}"; done
  run bench_fused_linear_onednn --method fused_fb --masked 0.5 "${common[@]}"
  # BLIS beside OpenBLAS on all but the largest shape (time)
  if [ "$N" -le 1024 ]; then for m in gemms fused_fb; do run bench_fused_linear_blis --method $m "${common[@]}"; done; fi
  for masked in 0 0.5; do
    echo "  torch_fused_linear.py masked $masked" >&2
    LD_PRELOAD=$jemalloc MALLOC_CONF=thp:always,dirty_decay_ms:-1,muzzy_decay_ms:-1 \
      "$py" bench/torch_fused_linear.py --d "$d" --V "$V" --N "$N" --masked "$masked" --threads "$threads" \
      --reps "$reps" --min-time 0 >>"$results"
  done
done
# The chunk size: the plan's against others, forward_backward on the Eigen build.
for s in $sweep; do
  IFS=: read -r d V N chunks <<<"$s"
  echo "== chunk sweep d=$d V=$V N=$N" >&2
  for c in ${chunks//,/ }; do
    run bench_fused_linear --method fused_fb --d "$d" --V "$V" --N "$N" --reps 2 --min-time 0 --chunk "$c"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
caches=$(for i in 2 3; do f=/sys/devices/system/cpu/cpu0/cache/index$i/size; if [ -e "$f" ]; then printf 'L%s %s ' "$((i == 2 ? 2 : 3))" "$(cat $f)"; fi; done)
"$py" bench/report_fused_linear.py "$results" --header \
  "# Fused linear + log-prob head: fused vs bare GEMMs vs materialised vs PyTorch" "" \
  "Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`scripts/bench_fused_linear.sh\`$([ "$quick" != 0 ] && echo ' (DFTUNE_BENCH_QUICK=1: one small shape, NOT the full run)') on $cpu, $(nproc) cores, ${caches}$(grep -m1 MemTotal /proc/meminfo | awk '{printf "%.0f GiB", $2/1048576}'), g++ $(g++ -dumpfullversion), -O3 -march=native, $threads threads; PyTorch $("$py" -c 'import torch; print(torch.__version__)') (Debian python3-torch, jemalloc)." \
  "Load average before / after: $load_before / $load_after. OMP_WAIT_POLICY=$OMP_WAIT_POLICY." \
  | tee "$out/table.md"
if [ "$quick" = 0 ]; then cp "$out/table.md" bench/RESULTS_fused_linear.md; fi
