#!/usr/bin/env python3
"""Mutation testing of the CUDA kernels against their GPU-free checks (docs/cuda.md, "Mutation table").

Each mutation is a deliberate bug: an exact piece of text of a header under include/dftune/logprob/cuda/
replaced by another (the piece must occur exactly once). For each one the script copies include/ to a
temporary directory, applies the mutation there (the worktree is never touched), builds
tests/cuda/test_kernels_emulated.cpp against the copy with the host compiler (-Og: quick to build, and
it contracts a·b + c·d into an fma where the test enables FMA; with the alignment sanitizer; the
suite stops at its first failing section), runs it, and for the
mutations whose detector is the compiler runs tests/cuda/compile_check.sh instead. A mutation is
caught when the run fails: a failed check, a launch the emulator refused (deadlock, barrier sites), a
fault in a guard page, a sanitizer report, or the time limit. A first run without mutation must pass.

  tests/cuda/mutate.py                     # all mutations, a table on stdout (~15 s of CPU each)
  tests/cuda/mutate.py --only B1,W2        # some of them
  tests/cuda/mutate.py --list              # what they are
  tests/cuda/mutate.py --markdown          # the table as markdown (docs/cuda.md)
Exit status 0 when every mutation is caught.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K = "dftune/logprob/cuda/kernels.cuh"
L = "dftune/logprob/cuda/online_lse.cuh"

# (id, what, file, old, new[, detector]) — detector "emulated" (default) or "compiler".
MUTATIONS = [
    # --- barriers
    ("B1", "group_merge: no barrier between writing and reading the warps' states", K,
     "    if (threadIdx.x % 32 == 0) sm.lse[warp] = st;\n    __syncthreads();\n",
     "    if (threadIdx.x % 32 == 0) sm.lse[warp] = st;\n"),
    ("B2", "group_merge: no barrier before the next row reuses shared memory", K,
     "    __syncthreads();  // sm is reused by the next row\n", ""),
    ("B3", "group_sum: no barrier between writing and reading the warps' sums", K,
     "    if (threadIdx.x % 32 == 0) sm.sum[warp] = x;\n    __syncthreads();\n",
     "    if (threadIdx.x % 32 == 0) sm.sum[warp] = x;\n"),
    ("B4", "group_sum: no barrier before the next sequence reuses shared memory", K,
     "    for (int w = 1; w < G / 32; ++w) all += sm.sum[w];\n    __syncthreads();\n",
     "    for (int w = 1; w < G / 32; ++w) all += sm.sum[w];\n"),
    # --- shuffles
    ("S1", "warp_merge: butterfly starts at offset 8", K,
     "for (int off = 16; off > 0; off >>= 1) {\n    const lse_state other",
     "for (int off = 8; off > 0; off >>= 1) {\n    const lse_state other"),
    ("S2", "warp_merge: butterfly stops before offset 1", K,
     "off > 0; off >>= 1) {\n    const lse_state other", "off > 1; off >>= 1) {\n    const lse_state other"),
    ("S3", "warp_merge: max from lane ^ (off ^ 1)", K,
     "__shfl_xor_sync(0xffffffffu, st.m, off)", "__shfl_xor_sync(0xffffffffu, st.m, off ^ 1)"),
    ("S4", "warp_merge: sum from lane ^ (off ^ 1)", K,
     "__shfl_xor_sync(0xffffffffu, st.s, off)", "__shfl_xor_sync(0xffffffffu, st.s, off ^ 1)"),
    ("S5", "warp_sum: butterfly starts at offset 8", K,
     "for (int off = 16; off > 0; off >>= 1) x +=", "for (int off = 8; off > 0; off >>= 1) x +="),
    ("S6", "warp_sum: butterfly stops before offset 1", K,
     "off > 0; off >>= 1) x +=", "off > 1; off >>= 1) x +="),
    ("S7", "warp_sum: partner lane ^ (off ^ 1)", K,
     "__shfl_xor_sync(0xffffffffu, x, off)", "__shfl_xor_sync(0xffffffffu, x, off ^ 1)"),
    # --- 64-bit row offsets
    ("W1", "forward: 32-bit row offset of the logits", K,
     "    const T* z = logits + row * static_cast<long long>(V);\n    // The target",
     "    const T* z = logits + static_cast<int>(row) * V;\n    // The target"),
    ("W2", "backward: 32-bit row offset of the logits", K,
     "    const T* z = logits + row * static_cast<long long>(V);  // may equal g",
     "    const T* z = logits + static_cast<int>(row) * V;  // may equal g"),
    ("W3", "backward: 32-bit row offset of the gradient", K,
     "    T* g = grad + row * static_cast<long long>(V);", "    T* g = grad + static_cast<int>(row) * V;"),
    # --- heads, tails, last steps dropped
    ("T1", "forward: tail elements dropped", K,
     "  if (tail + lane < V) {\n    const float x[1]", "  if (false) {\n    const float x[1]"),
    ("T2", "forward: head elements dropped", K,
     "  if (lane < head) {\n    const float x[1]", "  if (false) {\n    const float x[1]"),
    ("T3", "forward: the predicated last step's missing vectors not masked to -inf", K,
     "      if (i + u * G >= nvec)\n", "      if (false)\n"),
    ("T4", "backward: tail elements dropped", K,
     "    if (tail + lane < V) grad_pack<T, 1>", "    if (false) grad_pack<T, 1>"),
    ("T5", "backward: head elements dropped", K,
     "    if (lane < head) grad_pack<T, 1>", "    if (false) grad_pack<T, 1>"),
    ("T6", "masked-row zero fill: tail dropped", K,
     "      if (tail + lane < V) g[tail + lane] = from_float<T>(0.0f);",
     "      if (false) g[tail + lane] = from_float<T>(0.0f);"),
    ("T7", "masked-row zero fill: head dropped", K,
     "      if (lane < head) g[lane] = from_float<T>(0.0f);", "      if (false) g[lane] = from_float<T>(0.0f);"),
    ("T8", "masked-row zero fill: vector body dropped", K,
     "      for (int i = lane; i < nvec; i += G) store_pack", "      for (int i = lane; i < 0; i += G) store_pack"),
    # --- precision
    ("P1", "forward: the row's running sum rounded to the storage type", K,
     "    detail::lse_add(st, x);\n  }\n  const int tail",
     "    detail::lse_add(st, x);\n    st.s = to_float(from_float<T>(st.s));\n  }\n  const int tail"),
    ("P2", "segment sums accumulated in float", K, "    double acc = 0.0;", "    float acc = 0.0f;"),
    ("P3", "warp sums rounded to float", K,
     "x += __shfl_xor_sync(0xffffffffu, x, off);",
     "x = static_cast<float>(x + __shfl_xor_sync(0xffffffffu, x, off));"),
    ("P4", "backward: softmax probabilities rounded to the storage type", K,
     "- detail::exp_shifted(x[k], lse));", "- to_float(from_float<T>(detail::exp_shifted(x[k], lse))));"),
    ("P5", "lse_merge without the fixed operand order", L,
     "  if (lse_key(b) < lse_key(a)) {", "  if (false) {"),
    ("P6", "lse_add: old sum not rescaled to the new max", L,
     "  float s = st.s * exp_shifted(st.m, k);", "  float s = st.s;"),
    ("P7", "lse_shift: -inf max not replaced by 0", L,
     "return m == -pos_inf() ? 0.0f : m;", "return m;"),
    # --- off by one in masks and ranges
    ("R1", "forward: head lane < head -> <=", K,
     "  if (lane < head) {\n    const float x[1]", "  if (lane <= head) {\n    const float x[1]"),
    ("R2", "forward: vector load predicate < nvec -> <=", K,
     "raw[u] = i + u * G < nvec ? load_pack<T, K>(body", "raw[u] = i + u * G <= nvec ? load_pack<T, K>(body"),
    ("R3", "forward: last-step mask >= nvec -> >", K,
     "      if (i + u * G >= nvec)\n", "      if (i + u * G > nvec)\n"),
    ("R4", "forward: tail < V -> <=", K,
     "  if (tail + lane < V) {\n    const float x[1]", "  if (tail + lane <= V) {\n    const float x[1]"),
    ("R5", "forward: target check y >= V -> y > V", K,
     "    const bool bad_target = y < 0 || y >= V;\n    const float zy",
     "    const bool bad_target = y < 0 || y > V;\n    const float zy"),
    ("R6", "forward: target check y < 0 -> y < -1", K,
     "    const bool bad_target = y < 0 || y >= V;\n    const float zy",
     "    const bool bad_target = y < -1 || y >= V;\n    const float zy"),
    ("R7", "forward: rows row < N -> <=", K,
     "row < N; row += stride) {\n    const float w", "row <= N; row += stride) {\n    const float w"),
    ("R8", "forward: masked rows computed", K,
     "    if (w == 0.0f) {  // masked", "    if (false) {  // masked"),
    ("R9", "segment sum: rows r < e -> <=", K,
     "for (long long r = b + lane; r < e; r += G)", "for (long long r = b + lane; r <= e; r += G)"),
    ("R10", "segment sum: first row b -> b + 1", K,
     "for (long long r = b + lane; r < e; r += G)", "for (long long r = b + 1 + lane; r < e; r += G)"),
    ("R11", "segment sum: offsets check e > N -> >=", K, "e > N ||", "e >= N ||"),
    ("R12", "segment sum: last offset = N not checked", K, " || (s == S - 1 && e != N)", ""),
    ("R13", "segment sum: sequences s < S -> <=", K,
     "s < S; s += stride) {\n    const long long b", "s <= S; s += stride) {\n    const long long b"),
    ("R14", "sequence_of_row: offsets[mid] <= r -> <", K,
     "if (offsets[mid] <= r) lo = mid;", "if (offsets[mid] < r) lo = mid;"),
    ("R15", "sequence_of_row: check r < offsets[lo + 1] -> <=", K,
     "r < offsets[lo + 1]) ? lo : -1;", "r <= offsets[lo + 1]) ? lo : -1;"),
    ("R16", "sequence_of_row: search hi = S -> S - 1", K,
     "long long lo = 0, hi = S;", "long long lo = 0, hi = S - 1;"),
    ("R17", "backward: head lane < head -> <=", K,
     "    if (lane < head) grad_pack<T, 1>", "    if (lane <= head) grad_pack<T, 1>"),
    ("R18", "backward: vector load predicate < nvec -> <=", K,
     "raw[u] = i + u * G < nvec ? load_pack<T, K>(zb", "raw[u] = i + u * G <= nvec ? load_pack<T, K>(zb"),
    ("R19", "backward: vector store predicate < nvec -> <=", K,
     "        if (i + u * G < nvec) {\n          const int e", "        if (i + u * G <= nvec) {\n          const int e"),
    ("R20", "backward: tail < V -> <=", K,
     "    if (tail + lane < V) grad_pack<T, 1>", "    if (tail + lane <= V) grad_pack<T, 1>"),
    ("R21", "backward: target check y >= V -> y > V", K,
     "    const bool bad_target = y < 0 || y >= V;\n    float lse;",
     "    const bool bad_target = y < 0 || y > V;\n    float lse;"),
    ("R22", "backward: target check y < 0 -> y < -1", K,
     "    const bool bad_target = y < 0 || y >= V;\n    float lse;",
     "    const bool bad_target = y < -1 || y >= V;\n    float lse;"),
    ("R23", "backward: rows row < N -> <=", K,
     "row < N; row += stride) {\n    const T* z", "row <= N; row += stride) {\n    const T* z"),
    ("R24", "backward: masked rows computed", K,
     "    if (c == 0.0f) {  // masked", "    if (false) {  // masked"),
    ("R25", "zero fill: head lane < head -> <=", K,
     "      if (lane < head) g[lane] = from_float<T>(0.0f);", "      if (lane <= head) g[lane] = from_float<T>(0.0f);"),
    ("R26", "zero fill: vector body i < nvec -> <=", K,
     "      for (int i = lane; i < nvec; i += G) store_pack", "      for (int i = lane; i <= nvec; i += G) store_pack"),
    ("R27", "zero fill: tail < V -> <=", K,
     "      if (tail + lane < V) g[tail + lane] = from_float<T>(0.0f);",
     "      if (tail + lane <= V) g[tail + lane] = from_float<T>(0.0f);"),
    ("R28", "head_elems: one element too many (misaligned vectors)", K,
     "  return head < limit ? head : limit;", "  return head + 1 < limit ? head + 1 : limit;"),
    ("R29", "head_elems: one element too few (misaligned vectors)", K,
     "  return head < limit ? head : limit;", "  return head > 0 && head - 1 < limit ? head - 1 : (head > 0 ? limit : 0);"),
    # --- bad logits and extreme values
    ("N1", "forward: bad rows (non-finite lse or log-prob) not judged", K,
     "      } else if (!row_ok(lse, lp)) {", "      } else if (false) {"),
    ("N2", "backward without row_lse: bad rows not judged", K,
     "      if (!bad_target && !row_ok(lse, w * (zy - lse))) {", "      if (false) {"),
    ("N3", "row test on the lse only (a -inf target logit passes)", K,
     "{ return isfinite(lse) && isfinite(lp); }", "{ return isfinite(lse) && (lp == lp || true); }"),
    ("N4", "status area keeps the largest bad row", K,
     "atomicMax(&status->first_bad_row_not, ~static_cast<unsigned long long>(row));",
     "atomicMax(&status->first_bad_row_not, static_cast<unsigned long long>(row));"),
    ("N5", "backward: a non-finite row_lse leaves the row's gradient as computed", K,
     "        if (lane == 0) report(status, status_bad_row_lse);\n        c = detail::quiet_nan();\n",
     "        if (lane == 0) report(status, status_bad_row_lse);\n"),
    ("N6", "backward: the gradient scale only checked for NaN", K,
     "        if (!(fabsf(c) <= max_grad_scale<T>())) {  // also NaN", "        if (c != c) {"),
    ("N7", "backward: fp16 scale limit the full range instead of half", K,
     "return 0x1.ffcp+14f;", "return 0x1.ffcp+15f;"),
    ("N8", "segment sum: a sum beyond float not flagged", K,
     "      if (isfinite(acc) && !isfinite(sum)) {", "      if (false) {"),
    ("N9", "backward: no __syncwarp between the target logit's read and the warp's writes", K,
     "      if constexpr (G == 32) __syncwarp();\n", ""),
    # --- 128-bit stores (issue item 1): the values are the same, only the compiler check sees it
    ("V1", "vector stores as a plain 16-byte assignment", K,
     "  else __stwb(reinterpret_cast<uint4*>(g), p);", "  else *reinterpret_cast<uint4*>(g) = p;", "compiler"),
]


def run(cmd, timeout, env=None):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out, time.time() - t0


def why(rc, out):
    """What caught the mutation, in a few words."""
    if rc is None:
        return "time limit"
    for pattern, text in [(r"runtime error: .*misaligned", "alignment sanitizer"),
                          (r"emulator: invalid access", "segmentation fault outside the buffers"),
                          (r"emulator: access .*", None), (r"emulator: block .*?: (deadlock|thread)", None)]:
        m = re.search(pattern, out)
        if m:
            if text:
                return text
            line = m.group(0)
            if "deadlock" in line or "reached the" in line:
                return "emulator: " + ("deadlock" if "deadlock" in line else "two barrier sites")
            return "guard page (" + re.sub(r"^emulator: access \d+ bytes ", "", line) + ")"
    m = re.search(r"\[FAIL\] (.*?) \(", out)
    if m:
        return "check failed: " + m.group(1)
    if rc < 0:
        return "signal %d" % -rc
    return "exit %d" % rc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    ap.add_argument("--only", default="", help="comma-separated ids")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m[0] in args.only.split(",")]
    if args.list:
        for m in chosen:
            print("%-4s %-9s %s" % (m[0], m[5] if len(m) > 5 else "emulated", m[1]))
        return 0
    work = tempfile.mkdtemp(prefix="dftune_mutate_")
    exe = os.path.join(work, "test_kernels_emulated")
    # The sources are copied once, so that editing the worktree during a run changes nothing.
    shutil.copytree(os.path.join(ROOT, "include"), os.path.join(work, "pristine"))
    shutil.copytree(os.path.join(ROOT, "tests/cuda"), os.path.join(work, "tests"))
    test = os.path.join(work, "tests/test_kernels_emulated.cpp")
    env = dict(os.environ, DFTUNE_EMU_STOP_AT_FAILURE="1")

    def build_and_run(include):
        cmd = [args.cxx, "-std=gnu++20", "-Og", "-Wall", "-Wextra", "-Werror", "-ffp-contract=fast",
               "-fsanitize=alignment", "-fno-sanitize-recover=alignment", "-I" + include,
               "-I" + os.path.join(work, "tests/emulate"), test, "-o", exe]
        rc, out, t_build = run(cmd, 600)
        if rc != 0:
            return "build", out, t_build
        rc, out, t_run = run([exe], args.timeout, env)
        return rc, out, t_build + t_run

    def compile_check(include):
        rc, out, t = run(["bash", os.path.join(work, "tests/compile_check.sh"), args.nvcc, include,
                          os.path.join(work, "cc"), "80", "90"], 600)
        return rc, out, t

    rows = []
    try:
        base = os.path.join(work, "include")
        shutil.copytree(os.path.join(work, "pristine"), base)
        rc, out, t = build_and_run(base)
        if rc != 0:
            print(out)
            print("mutate.py: the suite fails without a mutation (%s); nothing to compare" % rc)
            return 2
        print("baseline: the unmutated suite passes (%.0f s)" % t, flush=True)
        for m in chosen:
            ident, what, rel, old, new = m[:5]
            detector = m[5] if len(m) > 5 else "emulated"
            inc = os.path.join(work, "include")
            shutil.rmtree(inc)
            shutil.copytree(os.path.join(work, "pristine"), inc)
            path = os.path.join(inc, rel)
            text = open(path).read()
            if text.count(old) != 1:
                print("mutate.py: %s: the text to replace occurs %d times in %s" % (ident, text.count(old), rel))
                return 2
            open(path, "w").write(text.replace(old, new))
            if detector == "compiler":
                rc, out, t = compile_check(inc)
                caught = rc != 0
                by = "compile check: " + (re.search(r"FAIL: (.*)", out).group(1)[:60] if caught and "FAIL:" in out
                                          else "fails") if caught else "-"
            else:
                rc, out, t = build_and_run(inc)
                if rc == "build":
                    print(out)
                    print("mutate.py: %s does not build" % ident)
                    return 2
                caught = rc != 0
                by = why(rc, out) if caught else "-"
            rows.append((ident, what, "caught" if caught else "MISSED", by, t))
            print("%-4s %-6s %-72s %s (%.0f s)" % (ident, rows[-1][2], what, by, t), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missed = [r for r in rows if r[2] != "caught"]
    if args.markdown:
        print("\n| id | deliberate bug | result | caught by |\n|---|---|---|---|")
        for r in rows:
            print("| %s | %s | %s | %s |" % (r[0], r[1].replace("|", "\\|"), r[2], r[3].replace("|", "\\|")))
    print("\n%d mutations, %d caught, %d missed%s" % (len(rows), len(rows) - len(missed), len(missed),
                                                    (": " + ", ".join(r[0] for r in missed)) if missed else ""))
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
