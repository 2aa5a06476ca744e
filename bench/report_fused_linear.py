#!/usr/bin/env python3
"""Formats scripts/bench_fused_linear.sh's results (one JSON object per line, from
bench_fused_linear and torch_fused_linear.py) as the markdown table of bench/RESULTS_fused_linear.md,
with the issue's targets checked per shape."""
import argparse, json
from collections import defaultdict

LABEL = {
    "fused_fb": "fused forward_backward (one pass)",
    "fused_2p": "fused forward, then backward (recomputes logits)",
    "fused_fwd": "fused forward only",
    "cce_fwd": "CCE-style forward only (prototype)",
    "gemms": "three bare GEMMs (Z = H Wᵀ, dH = Z W, dW = Zᵀ H)",
    "materialised": "materialised: GEMM + logprob::forward/backward + 2 GEMMs",
    "torch": "PyTorch: F.linear + log_softmax + gather + masked sum, autograd",
}
ORDER = ["gemms", "fused_fb", "fused_2p", "fused_fwd", "cce_fwd", "materialised", "torch"]
MiB = 1 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--header", nargs="*", default=[])
    a = ap.parse_args()
    every = [json.loads(l) for l in open(a.results) if l.strip().startswith("{")]
    rows = [r for r in every if not r.get("chunk_sweep")]
    sweep = [r for r in every if r.get("chunk_sweep")]
    print("\n".join(a.header))
    print()
    envs = {}  # the environment of each GEMM library's runs (bench_env.hpp, torch_env.py)
    for r in every:
        if "env" in r:
            envs.setdefault(r["gemm"], r["env"])
    for gemm, env in envs.items():
        print(f"- environment, {gemm}: `{json.dumps(env)}`")
    if envs:
        print()
    print("Times are the minimum over the timed calls (the first call, which measures the memory, is not one of them); "
          "peak extra memory is measured (VmHWM after a reset minus the resident set before the first call: workspace, "
          "outputs dH and dW, logits and anything else the call allocates; PyTorch's: its peak resident set minus that of a "
          "baseline process holding only the inputs, torch_fused_linear.py). `× 3 GEMMs` divides by the three bare GEMMs "
          "of the same library and shape; `PyTorch ×` is PyTorch's time at the same masking over this one (> 1: faster "
          "than PyTorch). GF/s counts the useful GEMM work of all N rows (2·N·V·d per GEMM; masked rows included, so a "
          "head that skips them shows more).")
    shapes = defaultdict(list)
    for r in rows:
        shapes[(r["d"], r["V"], r["N"])].append(r)
    summary = []
    fused_mem = {}
    for (d, V, N), rs in shapes.items():
        gemms = {r["gemm"]: r["ms"] for r in rs if r["method"] == "gemms"}
        torch = {r["masked"]: r for r in rs if r["method"] == "torch"}
        print(f"\n## d = {d}, V = {V}, N = {N}\n")
        plan = next((r for r in rs if r["method"].startswith("fused")), None)
        if plan:
            print(f"Plan: chunk_rows {plan['chunk_rows']}, vocab_tile {plan['vocab_tile']}, dim_tile {plan['dim_tile']}; "
                  f"workspace {plan['workspace_bytes'] / MiB:.1f} MiB; one GEMM = {plan['gemm_gflop']:.1f} GFLOP.\n")
        print("| path | GEMM | masked | ms | × 3 GEMMs | PyTorch × | GF/s | peak extra MiB |")
        print("|---|---|---|---|---|---|---|---|")
        key = lambda r: (ORDER.index(r["method"]), r["masked"], r["gemm"] != "Eigen", r["gemm"])
        seen = []
        for r in sorted(rs, key=key):
            m = r["method"]
            gemm_count = 1 if m.endswith("fwd") else 3
            gflops = gemm_count * 2 * N * V * d / 1e9
            x3 = f"{r['ms'] / gemms[r['gemm']]:.2f}" if r["gemm"] in gemms and m != "gemms" and m not in ("torch",) else "–"
            t = torch.get(r["masked"])
            vs_torch = f"{t['ms'] / r['ms']:.2f}" if t and m != "torch" and not m.endswith("fwd") else "–"
            gemm = r["gemm"].replace("PyTorch ", "")
            print(f"| {LABEL[m]} | {gemm} | {int(r['masked'] * 100)} % | {r['ms']:.1f} | {x3} | {vs_torch} | "
                  f"{gflops / (r['ms'] / 1e3):.0f} | {r['peak_extra_bytes'] / MiB:.1f} |")
            if m not in ("gemms",):
                seen.append(r)
        # The scores agree across paths (same inputs, PyTorch included): a check of the plumbing.
        for masked in sorted({r["masked"] for r in seen}):
            s = [r["seq0"] for r in seen if r["masked"] == masked]
            if s:
                ref = s[0]
                dev = max(abs(x - ref) / max(abs(ref), 1e-30) for x in s)
                print(f"\nseq_logp[0] at {int(masked * 100)} % masked: {ref:.6g} on every path (max relative deviation {dev:.1e}).")
        fb = {(r["gemm"], r["masked"]): r for r in rs if r["method"] == "fused_fb"}
        mat = next((r for r in rs if r["method"] == "materialised"), None)
        e = fb.get(("Eigen", 0))
        if e:
            fused_mem[(d, V, N)] = e["peak_extra_bytes"]
            line = f"- d {d}, V {V}, N {N}: fused one pass / 3 bare GEMMs = {e['ms'] / gemms.get('Eigen', float('nan')):.2f} (Eigen)"
            if ("OpenBLAS", 0) in fb and "OpenBLAS" in gemms:
                line += f", {fb[('OpenBLAS', 0)]['ms'] / gemms['OpenBLAS']:.2f} (OpenBLAS)"
            if ("BLIS", 0) in fb and "BLIS" in gemms:
                line += f", {fb[('BLIS', 0)]['ms'] / gemms['BLIS']:.2f} (BLIS)"
            if ("oneDNN", 0) in fb and "oneDNN" in gemms:
                line += f", {fb[('oneDNN', 0)]['ms'] / gemms['oneDNN']:.2f} (oneDNN)"
            if 0.0 in torch:
                best0 = min((r for (g, mk), r in fb.items() if mk == 0), key=lambda r: r["ms"])
                line += f"; PyTorch / fused at 0 % masked = {torch[0.0]['ms'] / e['ms']:.2f} (Eigen), {torch[0.0]['ms'] / best0['ms']:.2f} (best, {best0['gemm']})"
            if 0.5 in torch and ("Eigen", 0.5) in fb:
                best5 = min((r for (g, mk), r in fb.items() if mk == 0.5), key=lambda r: r["ms"])
                line += f"; at 50 % = {torch[0.5]['ms'] / fb[('Eigen', 0.5)]['ms']:.2f} (Eigen), {torch[0.5]['ms'] / best5['ms']:.2f} (best, {best5['gemm']})"
            if mat:
                line += f"; memory materialised / fused = {mat['peak_extra_bytes'] / max(e['peak_extra_bytes'], 1):.1f}×"
            if 0.0 in torch:
                line += f", PyTorch / fused = {torch[0.0]['peak_extra_bytes'] / max(e['peak_extra_bytes'], 1):.1f}×"
            summary.append(line)
    if summary:
        print("\n## Targets\n")
        print("\n".join(summary))
        by_vd = defaultdict(list)
        for (d, V, N), mem in fused_mem.items():
            by_vd[(d, V)].append((N, mem))
        for (d, V), l in by_vd.items():
            if len(l) > 1:
                l.sort()
                (n0, m0), (n1, m1) = l[0], l[-1]
                print(f"- extra memory against N (d {d}, V {V}): N {n0} → {n1}: {m0 / MiB:.1f} → {m1 / MiB:.1f} MiB "
                      f"(+{(m1 - m0) / MiB:.1f} MiB; dH alone grows by {(n1 - n0) * d * 4 / MiB:.1f} MiB)")
    if sweep:
        # The plan's own chunk is the main table's fused_fb row of the same shape.
        sweep += [dict(r, plan_chunk_rows=r["chunk_rows"]) for r in rows
                  if r["method"] == "fused_fb" and r["gemm"] == "Eigen" and r["masked"] == 0
                  and any((s["d"], s["V"], s["N"]) == (r["d"], r["V"], r["N"]) for s in sweep)]
        print("\n## Chunk size (fused forward_backward, Eigen, 0 % masked)\n")
        print("| d | V | N | chunk_rows | ms | workspace MiB | peak extra MiB |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(sweep, key=lambda r: (r["d"], r["V"], r["N"], r["chunk_rows"])):
            star = "*" if r.get("plan_chunk_rows") == r["chunk_rows"] else ""
            print(f"| {r['d']} | {r['V']} | {r['N']} | {r['chunk_rows']}{star} | {r['ms']:.1f} | "
                  f"{r['workspace_bytes'] / MiB:.1f} | {r['peak_extra_bytes'] / MiB:.1f} |")
        print("\n(* = the plan's own choice, from the last-level cache.)")


if __name__ == "__main__":
    main()
