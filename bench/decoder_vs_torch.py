#!/usr/bin/env python3
"""GPT-2 124M's shape, dftune's Decoder<float> (bench/decoder_step.cpp) beside PyTorch eager
(bench/torch_decoder.py) on the same tokens, at 1 and 2 threads, alternating the two programs so
that both see the same machine load; prints one JSON line per run and a table of ratios.
PyTorch's environment: bench/side_by_side.py (OPENBLAS_NUM_THREADS = the thread count; without
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unless --keep-openblas-env).
  cmake --build build --target decoder_step
  /usr/bin/python3 bench/decoder_vs_torch.py --exe build/bench/decoder_step [--S 4 --L 64 --reps 3 --B 2 --m 2 --keep-openblas-env]
"""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import side_by_side  # noqa: E402

ap = side_by_side.parser("build/bench/decoder_step")
ap.add_argument("--S", type=int, default=4)
ap.add_argument("--L", type=int, default=64)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--B", type=int, default=2)
ap.add_argument("--m", type=int, default=2)
ap.add_argument("--threads", default="1,2")
a = ap.parse_args()
rows = []
for t in [int(x) for x in a.threads.split(",")]:
    env, torch_env = side_by_side.envs(t, a.keep_openblas_env)
    for cmd, e in (([a.exe, str(a.S), str(a.L), str(a.reps), str(a.B), str(a.m)], env),
                   ([sys.executable, os.path.join(here, "torch_decoder.py"), "--threads", str(t), "--S", str(a.S), "--L", str(a.L),
                     "--reps", str(a.reps)], torch_env)):
        out = subprocess.run(cmd, env=e, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
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
