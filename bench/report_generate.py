#!/usr/bin/env python3
"""Formats scripts/bench_generate.sh's results (one JSON object per line from bench_generate and
torch_generate.py) as a markdown table: tokens/s side by side, the ratio, sequences/s, and the
environment each side ran in."""
import json, sys


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
    by = {}
    for r in rows:
        by.setdefault((r["threads"], r["batch"], r["new"]), {})[r["impl"]] = r
    r0 = rows[0]
    print(f"Shape: {r0['layers']} layers, d {r0['d']}, V {r0['V']}; prompts of {r0['prompt']} tokens; temperature "
          f"{r0['temperature']}, top-k {r0['top_k']}, top-p {r0['top_p']}; no eos (every sequence gets all its new tokens). "
          "Time of one generate call, prefill included (minimum over the timed calls after a warm-up).\n")
    print("| threads | batch | new tokens | dftune tokens/s | PyTorch tokens/s | dftune ÷ PyTorch | dftune sequences/s | load (dftune / PyTorch) |")
    print("|---|---|---|---|---|---|---|---|")
    for (t, b, n), v in sorted(by.items()):
        d, p = v.get("dftune"), v.get("torch")
        fmt = lambda r: f"{r['tokens_per_s']:.1f}" if r else "–"
        ratio = f"{d['tokens_per_s'] / p['tokens_per_s']:.2f}" if d and p else "–"
        seqs = f"{d['tokens_per_s'] / n:.2f}" if d else "–"
        load = f"{d['load'] if d else '–'} / {p['load'] if p else '–'}"
        print(f"| {t} | {b} | {n} | {fmt(d)} | {fmt(p)} | {ratio} | {seqs} | {load} |")
    print()
    for impl in ("dftune", "torch"):
        r = next((r for r in rows if r["impl"] == impl), None)
        if r:
            print(f"- {impl} environment (threads {r['threads']}): `{json.dumps(r['env'])}`")


if __name__ == "__main__":
    main()
