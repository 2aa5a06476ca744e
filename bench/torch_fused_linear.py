#!/usr/bin/env python3
"""PyTorch CPU baseline for bench_fused_linear: F.linear + log_softmax + gather + masked per-sequence
sum, autograd backward to H and W, on the same shapes, masking and threads. One shape per process;
prints one JSON object, with the environment (torch_env.py).

Peak extra memory: the peak resident set of this process (VmHWM, its whole life, through the first
step) minus the resident set of a baseline process, the same script with --baseline, which builds
the same inputs and stops. The inputs are filled chunk by chunk into their tensors, so no large
setup temporary exists: under jemalloc with its decay off (scripts/bench_fused_linear.sh), a freed
temporary stays resident and the step would reuse its pages, hiding that much of the step's memory
from a measurement that starts after the setup (the method before 2026-12-07, which understated
PyTorch ~3x). The in-process figure (VmHWM reset before the step, minus VmRSS then) is printed too,
as peak_extra_inprocess_bytes. The time is the minimum over the steps after the first. Masked rows
are computed like the others (weight 0), as a plain PyTorch head does.
"""
import argparse, json, math, os, subprocess, sys, time
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_env  # noqa: E402

SEQ_LEN = 64  # tokens per sequence, as in bench_fused_linear.cpp


def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def fill(n, salt, scale, chunk=1 << 20):
    """bench_fused_linear.cpp's fill(), bit for bit: the same inputs, so the scores can be compared.
    Written chunk by chunk into the result: no temporary larger than `chunk` elements."""
    out = torch.empty(n, dtype=torch.float32)
    for i0 in range(0, n, chunk):
        i = torch.arange(i0, min(n, i0 + chunk), dtype=torch.int64)
        h = ((i ^ salt) * 2654435761) & 0xFFFFFFFF
        out[i0:i0 + len(i)] = scale * ((h >> 8).to(torch.float32) * (2.0 / 16777216.0) - 1.0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--N", type=int, default=1024)
    ap.add_argument("--masked", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--baseline", action="store_true", help="build the inputs, print the resident set, stop")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    N, V, d = a.N, a.V, a.d
    H = fill(N * d, 1, torch.tensor(1.0)).reshape(N, d).requires_grad_()
    W = fill(V * d, 2, torch.tensor(3.0) / torch.sqrt(torch.tensor(float(d)))).reshape(V, d).requires_grad_()
    rows = torch.arange(N)
    y = ((rows * 7919) % V).unsqueeze(1)
    masked = int(a.masked * SEQ_LEN)
    w = ((rows % SEQ_LEN) >= masked).float()
    seg = rows // SEQ_LEN
    S = int(seg[-1]) + 1
    d_seq = torch.tensor([(-1.0 if s % 3 == 0 else 0.5) / S for s in range(S)])

    def step():
        H.grad = None
        W.grad = None
        z = F.linear(H, W)
        lp = torch.log_softmax(z, dim=-1).gather(1, y).squeeze(1) * w
        seq = torch.zeros(S).index_add_(0, seg, lp)
        seq.backward(d_seq)
        return seq

    if a.baseline:
        print(json.dumps({"rss_kib": status_kib("VmRSS"), "hwm_kib": status_kib("VmHWM")}))
        return
    # The baseline process: same interpreter, arguments and environment (allocator included).
    baseline = json.loads(subprocess.run([sys.executable] + sys.argv + ["--baseline"], check=True, capture_output=True,
                                         text=True).stdout)
    base = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    seq = step()
    first = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    times = []
    while len(times) < a.reps or sum(times) < a.min_time:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if len(times) >= 50:
            break
    times.sort()
    print(json.dumps({"gemm": "PyTorch " + torch.__version__, "method": "torch", "d": d, "V": V, "N": N, "masked": a.masked,
                      "threads": a.threads, "ms": 1e3 * times[0], "ms_median": 1e3 * times[len(times) // 2], "runs": len(times),
                      "first_ms": 1e3 * first, "peak_extra_bytes": (peak - baseline["rss_kib"]) * 1024,
                      "peak_extra_inprocess_bytes": (peak - base) * 1024, "baseline_rss_bytes": baseline["rss_kib"] * 1024,
                      "seq0": float(seq[0].detach()), "env": torch_env.env()}))


if __name__ == "__main__":
    main()
