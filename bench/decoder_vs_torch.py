#!/usr/bin/env python3
"""GPT-2 124M's shape, dftune's Decoder<float> (bench/decoder_step.cpp) beside PyTorch eager
(bench/torch_decoder.py) on the same tokens, at 1 and 2 threads, alternating the two programs so
that both see the same machine load; prints one JSON line per run and a table of ratios.
  cmake --build build --target decoder_step
  /usr/bin/python3 bench/decoder_vs_torch.py --exe build/bench/decoder_step [--S 4 --L 64 --reps 3 --B 2 --m 2]
"""
import argparse
import json
import os
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--exe", default="build/bench/decoder_step")
ap.add_argument("--S", type=int, default=4)
ap.add_argument("--L", type=int, default=64)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--B", type=int, default=2)
ap.add_argument("--m", type=int, default=2)
ap.add_argument("--threads", default="1,2")
a = ap.parse_args()
here = os.path.dirname(os.path.abspath(__file__))
rows = []
for t in [int(x) for x in a.threads.split(",")]:
    env = dict(os.environ, OMP_NUM_THREADS=str(t))
    for cmd in ([a.exe, str(a.S), str(a.L), str(a.reps), str(a.B), str(a.m)],
                [sys.executable, os.path.join(here, "torch_decoder.py"), "--threads", str(t), "--S", str(a.S), "--L", str(a.L),
                 "--reps", str(a.reps)]):
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(out, flush=True)
        rows.append(json.loads(out))
print(f"\nGPT-2 124M shape, {a.S} x {a.L} tokens (best of {a.reps}); DFT step: B = {a.B} prompts, m = {a.m} negatives of {a.L} tokens")
print("| threads | dftune fwd+bwd s | torch fwd+bwd s | speed-up | dftune fwd s | torch fwd s | speed-up | dftune peak RSS MB | torch peak RSS MB | dftune DFT step s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i in range(0, len(rows), 2):
    d, p = rows[i], rows[i + 1]
    print(f"| {d['threads']} | {d['fwd_bwd_s']:.2f} | {p['fwd_bwd_s']:.2f} | {p['fwd_bwd_s'] / d['fwd_bwd_s']:.2f}x | {d['forward_s']:.2f} | "
          f"{p['forward_s']:.2f} | {p['forward_s'] / d['forward_s']:.2f}x | {d['peak_rss_mb_fwd_bwd']:.0f} | {p['peak_rss_mb_fwd_bwd']:.0f} | "
          f"{d['dft_step_s']:.2f} |")
