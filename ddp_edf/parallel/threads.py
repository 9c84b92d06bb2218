"""BLAS threads per rank: the host's cores divided among the ranks on that host."""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_blas_threads(ranks_on_host: int, fixed: int = 0, environ=os.environ) -> str:
    """Limit BLAS to cores // ranks_on_host threads unless the user chose; ``fixed`` > 0 sets that many
    whatever was chosen (a GEMM's bits depend on its thread count).  Returns what was done."""
    chosen = {name: environ[name] for name in THREAD_VARIABLES if environ.get(name)}
    if chosen and not fixed:
        return f"BLAS threads left as set by the user ({', '.join(f'{k}={v}' for k, v in chosen.items())})"
    threads = fixed or max(1, available_cores() // max(ranks_on_host, 1))
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=threads, user_api="blas")
    if fixed:
        return f"BLAS threads: {threads} per rank (deterministic: a GEMM's bits depend on its thread count)"
    return f"BLAS threads: {threads} per rank ({available_cores()} cores / {ranks_on_host} ranks on this host)"
