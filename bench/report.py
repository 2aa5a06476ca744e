#!/usr/bin/env python3
"""Joins bench_logprob's Google Benchmark JSON files with torch_logprob.py's JSON files and prints
the side-by-side table (markdown) of scripts/bench_cpu.sh: times, speed-up over PyTorch, achieved
bandwidth for the bytes that must move and its fraction of the triad measured in the same
invocation (the runner measures each shape right after its own triad, then PyTorch on it, so a
ratio compares numbers taken under the same load), and the 2-thread scaling.
Usage: report.py --cpp a.json [b.json ...] --torch x.json [y.json ...] [--header LINE ...]"""
import argparse, json, re

ap = argparse.ArgumentParser()
ap.add_argument("--cpp", nargs="+", required=True)
ap.add_argument("--torch", nargs="+", required=True)
ap.add_argument("--header", nargs="*", default=[])
args = ap.parse_args()
header = args.header

MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
t = {}  # name without the min_time/real_time/iterations suffixes -> ms (minimum over repetitions)
cpu_t = {}  # the same, CPU time of the main thread
bw_of = {}  # name -> {("triad"|"read", threads): GB/s} measured in the same invocation
bw_all = {}  # ("triad"|"read", threads) -> [GB/s of each invocation]
for path in args.cpp:
    bench = json.load(open(path))["benchmarks"]
    local_t, local_bps = {}, {}
    for b in bench:
        if b.get("run_type") == "aggregate":
            continue
        name = re.sub(r"/(min_time:[0-9.]+|iterations:\d+|repeats:\d+|real_time)", "", b["name"])
        ms = b["real_time"] * MS[b["time_unit"]]
        if name not in local_t or ms < local_t[name]:
            local_t[name] = ms
            cpu_t[name] = b["cpu_time"] * MS[b["time_unit"]]
            if "bytes_per_second" in b:
                local_bps[name] = b["bytes_per_second"] / 1e9
    bw = {}
    for name, gbs in local_bps.items():
        m = re.match(r"bw/(triad|read)/threads:(\d+)$", name)
        if m:
            bw[(m.group(1), int(m.group(2)))] = gbs
            bw_all.setdefault((m.group(1), int(m.group(2))), []).append(gbs)
    for name, ms in local_t.items():
        t[name] = ms
        bw_of[name] = bw

torch_rows = []
envs = {}  # the environment each side ran in (bench_env.hpp, torch_env.py)
for path in args.cpp:
    ctx = json.load(open(path)).get("context", {})
    if "env" in ctx:
        envs.setdefault("bench_logprob", ctx["env"])
for path in args.torch:
    data = json.load(open(path))
    torch_rows += data["results"]
    if "env" in data:
        envs.setdefault("PyTorch", json.dumps(data["env"]))
tor = {(r["V"], r["N"], r.get("threads")): r for r in torch_rows}

threads = sorted({int(m.group(1)) for n in t for m in [re.search(r"threads:(\d+)$", n)] if m})
tmax = threads[-1]
best = lambda kind, th: max(bw_all.get((kind, th), [float("nan")]))
triad = {th: best("triad", th) for th in threads}
read = {th: best("read", th) for th in threads}

ELEM = {"float": 4, "double": 8, "bf16": 2}
PASSES = {"forward": 1, "backward": 2, "fused": 3}
out = list(header)
out.append("")
for k, v in envs.items():
    out.append(f"- environment, {k}: `{v}`")
out.append("Memory bandwidth, measured before every shape (STREAM-like triad, 24 B/element as STREAM counts; "
           "read-only sum); lowest and highest of the run, which shows how much the load varied:")
out.append("")
out.append("| threads | triad GB/s | read GB/s |")
out.append("|---|---|---|")
for th in threads:
    tr, rd = bw_all.get(("triad", th), [float("nan")]), bw_all.get(("read", th), [float("nan")])
    out.append(f"| {th} | {min(tr):.1f} – {max(tr):.1f} | {min(rd):.1f} – {max(rd):.1f} |")
out.append("")
out.append(f"Token log-prob reductions, {tmax} threads unless marked; times in ms (minimum over repetitions, "
           "each the mean of Google Benchmark's iterations; PyTorch: minimum of ≥ 3 runs after a warm-up). `×torch` = PyTorch time / fast-path time at the "
           "same thread count; `GB/s` = bytes that must move (forward: N·V·size read once; backward: read + write "
           "in place; fused: both) / fast-path time; `%triad` = that / the triad measured just before this shape at the same thread count (the in-place backward has no write-allocate traffic, which the triad's 24 B do not count either, so it can exceed 100 %); "
           f"`{tmax}T/1T` = fast-path speed-up from 1 to {tmax} threads (wall clock); `split` = CPU time of the "
           f"1-thread run / CPU time of the main thread in the {tmax}-thread run: how evenly the work is divided, "
           f"whatever else runs on the machine; generic = the serial oracle (N = 512 only).")
out.append("")
out.append(f"| type | V | N | op | generic 1T | fast 1T | fast {tmax}T | {tmax}T/1T | split | torch {tmax}T | ×torch | GB/s | %triad |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
shapes = sorted({(m.group(1), int(m.group(3)), int(m.group(4)), m.group(2))
                 for n in t for m in [re.match(r"logprob/fast/(\w+)/(\w+)/V:(\d+)/N:(\d+)/", n)] if m},
                key=lambda k: (["float", "bf16", "double"].index(k[0]), k[1], k[2], list(PASSES).index(k[3])))
fmt = lambda x: "–" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}")
for ty, V, N, op in shapes:
    base = f"{ty}/{op}/V:{V}/N:{N}"
    f1 = t.get(f"logprob/fast/{base}/threads:1")
    fm = t.get(f"logprob/fast/{base}/threads:{tmax}")
    g = t.get(f"logprob/generic/{base}/threads:1")
    tr = tor.get((V, N, tmax)) if ty == "float" else None
    tt = tr[op] * 1e3 if tr else None
    skipped = tor.get((V, N, None), {}).get("skipped") if ty == "float" else None
    gbs = PASSES[op] * V * N * ELEM[ty] / (fm * 1e-3) / 1e9 if fm else None
    row = [ty, str(V), str(N), op, fmt(g), fmt(f1), fmt(fm),
           fmt(f1 / fm) if f1 and fm else "–",
           fmt(cpu_t[f"logprob/fast/{base}/threads:1"] / cpu_t[f"logprob/fast/{base}/threads:{tmax}"]) if f1 and fm else "–",
           fmt(tt) if tt else ("skipped: " + skipped if skipped else "–"),
           fmt(tt / fm) if tt and fm else "–",
           fmt(gbs), f"{100 * gbs / bw_of[f'logprob/fast/{base}/threads:{tmax}'][('triad', tmax)]:.0f}%" if gbs else "–"]
    out.append("| " + " | ".join(row) + " |")

ceil = sorted({(m.group(1), m.group(2)) for n in t for m in [re.match(r"ceiling/fast/(\w+)/(\w+)/V:32000/N:4/threads:1$", n)] if m},
              key=lambda k: (["float", "bf16", "double"].index(k[0]), list(PASSES).index(k[1])))
if ceil:
    out.append("")
    out.append("Compute ceilings: one core, the batch in L2 (V = 32000, N = 4), from CPU time (time slices taken by "
               "other jobs excluded). `GB/s` = the memory traffic that rate would need (bytes that must move / time); "
               "`verdict` compares it (× threads) with the highest bandwidth measured in the run at that thread count "
               "(read-only for the forward, triad otherwise).")
    out.append("")
    out.append("| type | op | ns / logit | GB/s at 1 core | verdict 1T | verdict " + f"{tmax}T |")
    out.append("|---|---|---|---|---|---|")
    for ty, op in ceil:
        ms = cpu_t[f"ceiling/fast/{ty}/{op}/V:32000/N:4/threads:1"]  # CPU time: preemption excluded
        ns = ms * 1e6 / (32000 * 4)
        gbs = PASSES[op] * ELEM[ty] / ns
        bw = read if op == "forward" else triad
        verdict = lambda th: "compute-bound" if gbs * th < bw[th] else "memory-bound"
        out.append(f"| {ty} | {op} | {ns:.3f} | {gbs:.1f} | {verdict(1)} | {verdict(tmax)} |")

# PyTorch at 1 thread, for the single-thread comparison.
rows1 = [(V, N, op, tor[(V, N, 1)][op] * 1e3, t.get(f"logprob/fast/float/{op}/V:{V}/N:{N}/threads:1"))
         for (V, N, th) in sorted(k for k in tor if k[2] == 1) for op in PASSES]
if rows1:
    out.append("")
    out.append("float, 1 thread: PyTorch vs the fast path (ms):")
    out.append("")
    out.append("| V | N | op | torch 1T | fast 1T | ×torch |")
    out.append("|---|---|---|---|---|---|")
    for V, N, op, tt, f1 in rows1:
        out.append(f"| {V} | {N} | {op} | {fmt(tt)} | {fmt(f1)} | {fmt(tt / f1) if f1 else '–'} |")

dft = sorted({int(m.group(1)) for n in t for m in [re.match(r"dft/step/B:64/m:(\d+)$", n)] if m})
if dft:
    out.append("")
    out.append(f"dft_step (B = 64, float) beside the fused fast-path reduction of the same batch "
               f"(B·(1+m) sequences × 16 tokens, V = 32000, {tmax} threads):")
    out.append("")
    out.append("| m | tokens N | dft_step µs | reduction ms | dft_step / reduction |")
    out.append("|---|---|---|---|---|")
    for m in dft:
        s = t[f"dft/step/B:64/m:{m}"]
        r = t.get(f"dft/reduction/B:64/m:{m}/threads:{tmax}")
        out.append(f"| {m} | {64 * (1 + m) * 16} | {s * 1e3:.1f} | {fmt(r)} | {100 * s / r:.3f}% |" if r else f"| {m} | | {s*1e3:.1f} | – | – |")
print("\n".join(out))
