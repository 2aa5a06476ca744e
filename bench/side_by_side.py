"""What the scripts that run a dftune benchmark beside its PyTorch twin share (tiny_lm_vs_torch.py,
decoder_vs_torch.py): their common options and the environments of the two sides at a thread count.
PyTorch gets OPENBLAS_NUM_THREADS = threads (Debian's pthread OpenBLAS ignores
torch.set_num_threads) and, unless --keep-openblas-env, no OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
(this machine sets them globally and they halve OpenBLAS's GEMM: bench/RESULTS_gemm_env.md)."""
import argparse
import os


def parser(exe):
    """An ArgumentParser with --exe (default: exe) and --keep-openblas-env."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", default=exe)
    ap.add_argument("--keep-openblas-env", action="store_true", help="leave OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE to PyTorch")
    return ap


def envs(threads, keep_openblas_env):
    """(dftune's environment, PyTorch's) for a run on `threads` threads."""
    ours = dict(os.environ, OMP_NUM_THREADS=str(threads))
    torch = dict(ours, OPENBLAS_NUM_THREADS=str(threads))
    if not keep_openblas_env:
        for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            torch.pop(v, None)
    return ours, torch
