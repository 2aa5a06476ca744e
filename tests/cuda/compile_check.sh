#!/usr/bin/env bash
# What the compiler makes of the CUDA kernels, checked without a GPU (CTest: cuda_kernels_compiled).
#   compile_check.sh <nvcc> <include dir> <work dir> <arch>...      e.g. ... 80 90
# For each arch, compile_check.cu (every kernel dispatch.cuh and linear.cuh launch) is compiled to PTX and to a
# cubin with `ptxas -v`, and for every kernel:
#   - no spills and no stack frame (ptxas -v), no local memory in the PTX (.local, ld/st.local);
#   - the vectorised paths use 128-bit accesses: row_logsumexp_gather_kernel and the vector
#     softmax_grad_kernel (VECTOR = true) hold >= 4 ld.global*.v4 (UNROLL vectors in flight); the
#     vector backward holds >= 5 st.global*.v4 (4 gradient packs + the masked-row zero fill) and at
#     most 4 scalar st.global (the head and tail elements of both) — a 16-byte pack split into
#     scalar stores (8 x st.global.u16 for bf16/fp16, 4 x .u32/.f32 for float) fails this;
# and prints registers, barriers, spills and the access counts per kernel. The PTX text is the
# evidence for the access widths: cuobjdump/nvdisasm (SASS) are not part of every CUDA install, and
# a PTX ld/st.v4 requires 16-byte alignment, so ptxas emits it as one 128-bit LDG/STG.
set -euo pipefail
nvcc=$1 include=$2 work=$3
shift 3
src=$(cd "$(dirname "$0")" && pwd)/compile_check.cu
status=0
for arch in "$@"; do
  dir=$work/sm_$arch
  rm -rf "$dir" && mkdir -p "$dir"
  if ! "$nvcc" -std=c++20 -I"$include" -arch=sm_"$arch" -cubin --keep --keep-dir "$dir" -Xptxas -v \
      -Werror=all-warnings "$src" -o "$dir/kernels.cubin" > "$dir/ptxas.log" 2>&1; then
    cat "$dir/ptxas.log"
    echo "compile_check: nvcc failed for sm_$arch"
    exit 1
  fi
  ptx=$(ls "$dir"/*.ptx)
  # One line per kernel: mangled name, registers, barriers, stack, spill stores, spill loads.
  awk '
    /Function properties for/ { name = $NF }
    /bytes stack frame/ { stack[name] = $1; sst[name] = $5; sld[name] = $9 }
    /Used [0-9]+ registers/ {
      r = b = "?"
      for (i = 2; i <= NF; ++i) { if ($(i) ~ /^registers/) r = $(i - 1); if ($(i) ~ /^barriers/) b = $(i - 1) }
      print name, r, b, stack[name], sst[name], sld[name]
    }' "$dir/ptxas.log" | sort > "$dir/ptxas.txt"
  # One line per kernel: mangled name, v4 global loads, v4 global stores, scalar global stores,
  # local-memory mentions.
  awk '
    /^\.visible \.entry/ { name = $3; sub(/\($/, "", name); ldv[name] = 0; stv[name] = 0; sts[name] = 0; loc[name] = 0 }
    name == "" { next }
    /ld\.global(\.[a-z0-9]+)*\.v4/ { ++ldv[name] }
    /st\.global(\.[a-z0-9]+)*\.v4/ { ++stv[name]; next }
    /st\.global/ { ++sts[name] }
    /\.local|local_depot/ { ++loc[name] }
    END { for (n in ldv) print n, ldv[n], stv[n], sts[n], loc[n] }' "$ptx" | sort > "$dir/ptx.txt"
  echo "sm_$arch (nvcc $("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')): registers, barriers, spills and global accesses per kernel"
  printf "  %-58s %4s %4s %6s %6s %6s %9s\n" kernel regs bars stack spill ld.v4 "st.v4/st"
  join "$dir/ptxas.txt" "$dir/ptx.txt" | while read -r name regs bars stack sst sld ldv stv sts loc; do
    pretty=$(echo "$name" | c++filt | sed -e 's/dftune::v0::logprob::cuda::kernels:://' -e 's/dftune::v0::logprob::cuda::linear::detail:://' -e 's/(.*//' -e 's/__nv_bfloat16/bf16/' -e 's/__half/fp16/')
    problems=()
    [ "$stack" = 0 ] || problems+=("stack frame $stack B")
    [ "$sst" = 0 ] && [ "$sld" = 0 ] || problems+=("spills $sst/$sld B")
    [ "$loc" = 0 ] || problems+=("local memory in the PTX ($loc lines)")
    case "$pretty" in
      *row_logsumexp_gather_kernel*)
        [ "$ldv" -ge 4 ] || problems+=("$ldv 128-bit loads, expected >= 4") ;;
      *softmax_grad_kernel*", true>"*)
        [ "$ldv" -ge 4 ] || problems+=("$ldv 128-bit loads, expected >= 4")
        [ "$stv" -ge 5 ] || problems+=("$stv 128-bit stores, expected >= 5")
        [ "$sts" -le 4 ] || problems+=("$sts scalar stores, expected <= 4 (head and tail)") ;;
    esac
    printf '  %-58s %4s %4s %6s %6s %6s %5s/%-3s %s\n' "$pretty" "$regs" "$bars" "$stack" "$sst/$sld" "$ldv" "$stv" "$sts" \
      "${problems[*]:+FAIL: ${problems[*]}}"
    [ ${#problems[@]} -eq 0 ] || echo FAIL >> "$dir/failed"
  done
  kernels=$(wc -l < "$dir/ptx.txt")
  if [ "$kernels" -ne 24 ] || [ "$(wc -l < "$dir/ptxas.txt")" -ne 24 ]; then
    echo "compile_check: sm_$arch: expected 24 kernels, found $kernels in the PTX and $(wc -l < "$dir/ptxas.txt") in ptxas -v"
    status=1
  fi
  [ ! -e "$dir/failed" ] || status=1
done
[ $status -eq 0 ] && echo "compile_check: ok" || echo "compile_check: FAILED"
exit $status
