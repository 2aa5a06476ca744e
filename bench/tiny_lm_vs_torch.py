#!/usr/bin/env python3
"""TinyLm<float> at its GPT-2-like shape (bench/tiny_lm_step.cpp gpt2) beside the same model in
PyTorch eager (bench/torch_tiny_lm_step.py) on the same tokens, one scored step (forward +
backward) on --threads threads, the two programs alternated --pairs times so that both see the
same machine load. Times are CPU time per step (medians); prints each program's line and a table.
PyTorch's environment: bench/side_by_side.py (OPENBLAS_NUM_THREADS = --threads; without
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unless --keep-openblas-env).
  cmake --build build --target tiny_lm_step
  /usr/bin/python3 bench/tiny_lm_vs_torch.py --exe build/bench/tiny_lm_step [--threads 1 --pairs 3 --rounds 3]
"""
import json
import os
import re
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import side_by_side  # noqa: E402

ap = side_by_side.parser("build/bench/tiny_lm_step")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--pairs", type=int, default=3)
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()
env, torch_env = side_by_side.envs(a.threads, a.keep_openblas_env)
kinds = {"forward + backward": "plain", "scored step (": "scored", "scored step, activations kept": "kept"}
ours = {k: [] for k in kinds.values()}
torch_cpu, torch_wall = [], []
for _ in range(a.pairs):
    out = subprocess.run([a.exe, "gpt2", str(a.rounds)], env=env, check=True, capture_output=True, text=True).stdout
    print(out.strip(), flush=True)
    for line in out.splitlines():
        for prefix, k in kinds.items():
            if line.startswith(prefix):
                ours[k].append(float(re.search(r"\s([0-9.]+) ms", line).group(1)))
    out = subprocess.run([sys.executable, os.path.join(here, "torch_tiny_lm_step.py"), "--threads", str(a.threads), "--rounds", str(a.rounds)],
                         env=torch_env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(out, flush=True)
    r = json.loads(out)
    torch_cpu.append(r["cpu_ms"])
    torch_wall.append(r["wall_ms"])
t = statistics.median(torch_cpu)
print(f"\nTinyLm GPT-2-like shape, 4 x 64 tokens, {a.threads} thread(s); medians over {a.pairs} alternations of {a.rounds} rounds; CPU ms per step")
print("| step | dftune CPU ms | steps per CPU-s | PyTorch eager CPU ms | PyTorch steps per CPU-s | dftune speed-up |")
print("|---|---|---|---|---|---|")
for k, label in (("kept", "scored step, activations kept (one forward + backward)"), ("scored", "scored step, forward again"),
                 ("plain", "forward + backward (accumulate_gradients)")):
    if ours[k]:
        m = statistics.median(ours[k])
        print(f"| {label} | {m:.1f} | {1e3 / m:.2f} | {t:.1f} | {1e3 / t:.2f} | {t / m:.2f}x |")
