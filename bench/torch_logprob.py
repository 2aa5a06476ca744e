#!/usr/bin/env python3
"""PyTorch CPU baseline for bench_logprob: log_softmax + gather + per-sequence index_add, and its
autograd backward, on the shapes and thread counts of the C++ benchmarks. Prints one JSON object.

forward  = no_grad log_softmax + gather + index_add
backward = autograd.grad of the sequence sums wrt the logits, graph built once (retain_graph)
fused    = both, as a training step runs them
"""
import argparse, json, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_env  # noqa: E402

SEQ_LEN = 64  # tokens per sequence, as in bench_logprob.cpp


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def timeit(fn, min_time):
    """Minimum over runs (other jobs may share the machine; noise only adds time)."""
    fn()  # warm-up (allocator, thread pool)
    runs, total, best = 0, 0.0, float("inf")
    while total < min_time or runs < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        total, best, runs = total + dt, min(best, dt), runs + 1
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocabs", default="32000,128256,256000")
    ap.add_argument("--rows", default="512,4096")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--ops", default="forward,backward,fused", help="which of forward, backward, fused to time")
    a = ap.parse_args()
    out = {"torch": torch.__version__, "results": []}
    for V in map(int, a.vocabs.split(",")):
        for N in map(int, a.rows.split(",")):
            # x, log_softmax's output, the dense gradient of gather and the gradient of the logits.
            ops = a.ops.split(",")
            need = (2 if ops == ["forward"] else 4) * N * V * 4
            if need > 0.8 * mem_available():
                out["results"].append({"V": V, "N": N, "skipped": f"needs ~{need / 2**30:.1f} GiB"})
                continue
            x = torch.empty(N, V).uniform_(-8.0, 8.0)
            y = torch.randint(V, (N, 1))
            seg = torch.arange(N) // SEQ_LEN
            S = int(seg[-1]) + 1
            d = torch.full((S,), 0.5)

            def forward():
                with torch.no_grad():
                    lp = torch.log_softmax(x, dim=-1).gather(1, y).squeeze(1)
                    return torch.zeros(S).index_add_(0, seg, lp)

            xr = x.detach().requires_grad_()

            def graph():
                lp = torch.log_softmax(xr, dim=-1).gather(1, y).squeeze(1)
                return torch.zeros(S).index_add_(0, seg, lp)

            def fused():
                return torch.autograd.grad(graph(), xr, grad_outputs=d)[0]

            for t in map(int, a.threads.split(",")):
                torch.set_num_threads(t)
                row = {"V": V, "N": N, "threads": t}
                if "forward" in ops:
                    row["forward"] = timeit(forward, a.min_time)
                if "backward" in ops:
                    seq = graph()
                    row["backward"] = timeit(lambda: torch.autograd.grad(seq, xr, grad_outputs=d, retain_graph=True)[0], a.min_time)
                    del seq
                if "fused" in ops:
                    row["fused"] = timeit(fused, a.min_time)
                out["results"].append(row)
            del x, xr
    out["env"] = torch_env.env()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
