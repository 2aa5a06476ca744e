#!/usr/bin/env bash
# Tokens/s of cached generation (Decoder::generate, docs/generation.md) beside a PyTorch eager
# sampler with its own key/value cache on the same architecture and shape (bench/torch_generate.py),
# 1 and 2 threads, then the table (bench/report_generate.py). The default is GPT-2 124M (12 layers,
# d 768, 12 heads, d_ff 3072, V 50257, tied head) on the decoder family; DFTUNE_GEN_SHAPE="--arch
# tiny" runs the tiny LM (untied head with a bias) at that shape instead.
#   scripts/bench_generate.sh                       batch 1, 8, 32 × 64 and 256 new tokens, 1 and 2 threads
#   DFTUNE_GEN_BATCH=1,8 DFTUNE_GEN_NEW=64 ...      fewer configurations
#   DFTUNE_GEN_NEW_T2=64                            other lengths on 2 threads (default: DFTUNE_GEN_NEW)
#   DFTUNE_GEN_SHAPE="--layers 2 --d 64 --heads 4 --ff 256 --V 1000"   another shape (both sides)
#   DFTUNE_BENCH_BUILD=dir                          build directory (default build-bench)
# PyTorch's BLAS here is Debian's OpenBLAS pthread build, which ignores torch.set_num_threads: the
# torch side runs with OPENBLAS_NUM_THREADS set to the same thread count. Both print their
# environment (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE, OMP_NUM_THREADS, GEMM, flags, torch's parallel
# info) in every result line.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${DFTUNE_BENCH_BUILD:-build-bench}
py=/usr/bin/python3
batch=${DFTUNE_GEN_BATCH:-1,8,32}
new=${DFTUNE_GEN_NEW:-64,256}
new2=${DFTUNE_GEN_NEW_T2:-$new}
read -r -a shape <<<"${DFTUNE_GEN_SHAPE:-}"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDFTUNE_BENCH_NATIVE=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target bench_generate >/dev/null
out="$build/bench_generate"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
for threads in 2 1; do
  lengths=$new
  [ "$threads" = 2 ] && lengths=$new2
  echo "== $threads threads: dftune" >&2
  OMP_NUM_THREADS=$threads "$build/bench/bench_generate" "${shape[@]}" --threads "$threads" --batch "$batch" --new "$lengths" | tee -a "$results" >&2
  echo "== $threads threads: PyTorch" >&2
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$py" bench/torch_generate.py "${shape[@]}" --threads "$threads" \
    --batch "$batch" --new "$lengths" | tee -a "$results" >&2
done
"$py" bench/report_generate.py "$results" | tee "$out/table.md"
