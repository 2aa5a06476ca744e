#!/usr/bin/env python3
"""GF/s of PyTorch's float GEMM (torch.mm: OpenBLAS here) on a few shapes and thread counts, with the
environment it ran in (torch_env.py). Run it twice, as scripts/bench_gemm_env.sh does, once as the
machine is set up and once with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, to see what the
environment does to every GF/s and every ratio against PyTorch in bench/RESULTS_*.md."""
import argparse, json, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_env  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1024x512x32000,2048x2048x2048", help="MxKxN,... (C[M,N] = A[M,K] B[K,N])")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=1.0)
    a = ap.parse_args()
    for t in map(int, a.threads.split(",")):
        torch.set_num_threads(t)
        for shape in a.shapes.split(","):
            M, K, N = map(int, shape.split("x"))
            A, B = torch.randn(M, K), torch.randn(K, N)
            C = A @ B  # warm-up
            best, total = float("inf"), 0.0
            while total < a.min_time:
                t0 = time.perf_counter()
                torch.mm(A, B, out=C)
                dt = time.perf_counter() - t0
                best, total = min(best, dt), total + dt
            print(json.dumps({"M": M, "K": K, "N": N, "threads": t, "ms": 1e3 * best, "gflops": 2 * M * K * N / best / 1e9,
                              "load": " ".join(open("/proc/loadavg").read().split()[:3]), "env": torch_env.env()}), flush=True)


if __name__ == "__main__":
    main()
