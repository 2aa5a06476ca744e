#!/usr/bin/env bash
# What the environment does to GEMM speed (bench/RESULTS_gemm_env.md): PyTorch's float GEMM
# (OpenBLAS here) and the Eigen build's bare GEMMs (bench_fused_linear --method gemms, a control:
# Eigen reads no OpenBLAS variable), each run as the machine is set up and with OPENBLAS_CORETYPE
# and OPENBLAS_L2_SIZE unset in that command alone, alternating, DFTUNE_GEMM_ENV_ROUNDS times
# (default 3); one JSON object per measurement, every one with its environment.
#   scripts/bench_gemm_env.sh [results.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${DFTUNE_BENCH_BUILD:-build-bench}
py=/usr/bin/python3
rounds=${DFTUNE_GEMM_ENV_ROUNDS:-3}
results=${1:-$build/gemm_env.jsonl}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDFTUNE_BENCH_NATIVE=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target bench_fused_linear >/dev/null
mkdir -p "$(dirname "$results")"
: >"$results"
for round in $(seq "$rounds"); do
  for unset in no yes; do
    pre=(env)
    [ "$unset" = yes ] && pre=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
    for t in 1 2; do  # OpenBLAS's pthread build ignores torch.set_num_threads
      "${pre[@]}" OPENBLAS_NUM_THREADS=$t "$py" bench/torch_gemm_env.py --threads $t --min-time 0.5 >>"$results"
    done
    for t in 1 2; do
      "${pre[@]}" "$build/bench/bench_fused_linear" --method gemms --d 512 --V 32000 --N 1024 --threads $t --reps 1 --min-time 0 >>"$results"
    done
  done
  echo "round $round done" >&2
done
"$py" - "$results" <<'PY'
import json, sys
best = {}
for l in open(sys.argv[1]):
    r = json.loads(l)
    env = r["env"]
    unset = env.get("OPENBLAS_CORETYPE") is None
    if "gflops" in r:
        key = ("PyTorch torch.mm", f"{r['M']}x{r['K']}x{r['N']}", r["threads"])
        g = r["gflops"]
    else:
        key = (f"Eigen bare GEMMs (bench_fused_linear)", f"d {r['d']} V {r['V']} N {r['N']}", r["threads"])
        g = 3 * 2 * r["N"] * r["V"] * r["d"] / (r["ms"] / 1e3) / 1e9
    best.setdefault(key, {})[unset] = max(best.get(key, {}).get(unset, 0), g)
print("| GEMM | shape | threads | GF/s, OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512 | GF/s, both unset | unset ÷ set |")
print("|---|---|---|---|---|---|")
for (what, shape, t), v in sorted(best.items()):
    s, u = v.get(False), v.get(True)
    print(f"| {what} | {shape} | {t} | {s:.1f} | {u:.1f} | {u / s:.2f} |")
PY
