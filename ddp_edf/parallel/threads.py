"""BLAS threads per rank: the host's cores divided among the ranks on that host, or a number given."""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_blas_threads(ranks_on_host: int, threads: int = 0, environ=os.environ) -> str:
    """Limit BLAS to cores // ranks_on_host threads unless the user chose (a variable); ``threads`` > 0
    sets that many whatever was chosen (a GEMM's bits depend on its thread count).  Returns what was done."""
    chosen = {name: environ[name] for name in THREAD_VARIABLES if environ.get(name)}
    if chosen and not threads:
        return f"BLAS threads left as set by the user ({', '.join(f'{k}={v}' for k, v in chosen.items())})"
    count = threads or max(1, available_cores() // max(ranks_on_host, 1))
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=count, user_api="blas")
    if threads:
        return f"BLAS threads: {count} per rank (as asked)"
    return f"BLAS threads: {count} per rank ({available_cores()} cores / {ranks_on_host} ranks on this host)"


def blas_threads() -> int:
    """The most threads any loaded BLAS library may use now."""
    from threadpoolctl import threadpool_info
    return max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1)
