"""The environment a PyTorch baseline ran in, printed by every torch benchmark beside its numbers
(bench/bench_env.hpp is the C++ side): OpenBLAS's and OpenMP's variables, which BLAS PyTorch was
built with, and its parallel settings (torch.__config__.parallel_info())."""
import os
import torch

VARS = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LD_PRELOAD", "MALLOC_CONF"]


def env():
    cfg = torch.__config__.show()
    blas = [t[t.index(k):].strip() for t in cfg.replace("\n", ",").split(",") for k in ("BLAS_INFO=", "PERF_WITH_AVX512=") if k in t]
    torch.ones(64, 64) @ torch.ones(64, 64)  # loads the BLAS library, then named from the process's maps
    libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "blas" in l.lower() and "/" in l})
    par = [l.strip() for l in torch.__config__.parallel_info().splitlines() if l.strip() and not l.startswith("---")]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    return {**{v: os.environ.get(v) for v in VARS}, "gemm": "PyTorch " + torch.__version__, "torch_blas": "; ".join(blas + libs),
            "torch_parallel": "; ".join(par), "cpu": cpu}
