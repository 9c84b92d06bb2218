"""Which OpenBLAS kernels NumPy's matrix products run on.  Chosen once, before NumPy is imported.

Nearly all of a training step is two sgemm calls (x W and x^T dy), so the GEMM kernel decides the
speed.  OpenBLAS picks its kernels for the CPU when it is loaded, reading the environment variable
OPENBLAS_CORETYPE if it is set.  On AMD Zen 4 (x86 family 25 with AVX-512) it picks its SkylakeX
(AVX-512) kernels; Zen 4 executes each 512-bit FMA as two 256-bit halves, and OpenBLAS's Haswell
(AVX2) kernels run this model's sgemm shapes ~5% faster there (measured with
``benchmarks/blas_kernels.py``; numbers in docs/performance.md).  So on Zen 4 we ask for Haswell.
Other CPUs keep OpenBLAS's own choice: the rule is what we measured, not a guess about others.

    DDP_EDF_BLAS_KERNEL unset or "auto"   the rule above
    DDP_EDF_BLAS_KERNEL=native            OpenBLAS's own choice
    DDP_EDF_BLAS_KERNEL=<name>            OPENBLAS_CORETYPE=<name> (e.g. Haswell, SkylakeX, Zen)

An OPENBLAS_CORETYPE set by the user always wins.  Results differ only by float rounding.
This module imports no NumPy (it must run before NumPy loads OpenBLAS).
"""

from __future__ import annotations

import os
import sys

KERNEL_VARIABLE = "DDP_EDF_BLAS_KERNEL"
OPENBLAS_VARIABLE = "OPENBLAS_CORETYPE"


def cpu_facts(cpuinfo: str) -> dict:
    """vendor, family and flags of the first processor in a /proc/cpuinfo text."""
    facts = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("vendor_id", "cpu family", "flags") and key not in facts:
            facts[key] = value.strip()
        if not line.strip() and facts:  # end of the first processor's block
            break
    return {"vendor": facts.get("vendor_id", ""), "family": facts.get("cpu family", ""),
            "flags": set(facts.get("flags", "").split())}


def preferred_kernel(environ, cpuinfo: str) -> tuple[str | None, str]:
    """(value for OPENBLAS_CORETYPE or None to leave it alone, why) -- a pure function of its inputs."""
    if environ.get(OPENBLAS_VARIABLE):
        return None, f"{OPENBLAS_VARIABLE}={environ[OPENBLAS_VARIABLE]} set by the user"
    wish = environ.get(KERNEL_VARIABLE, "auto").strip() or "auto"
    if wish == "native":
        return None, f"OpenBLAS's own choice ({KERNEL_VARIABLE}=native)"
    if wish != "auto":
        return wish, f"{KERNEL_VARIABLE}={wish}"
    cpu = cpu_facts(cpuinfo)
    if cpu["vendor"] == "AuthenticAMD" and cpu["family"] == "25" and "avx512f" in cpu["flags"]:
        return "Haswell", (f"ddp_edf's choice on AMD Zen 4, faster there than SkylakeX; {KERNEL_VARIABLE}=native "
                           f"keeps OpenBLAS's")
    return None, "OpenBLAS's own choice for this CPU"


def choose_openblas_kernel(environ=os.environ, modules=sys.modules, cpuinfo_path="/proc/cpuinfo") -> str:
    """Set OPENBLAS_CORETYPE in ``environ`` per ``preferred_kernel``; returns a note for the log."""
    try:
        with open(cpuinfo_path) as handle:
            cpuinfo = handle.read()
    except OSError:  # not Linux: no rule applies
        cpuinfo = ""
    kernel, why = preferred_kernel(environ, cpuinfo)
    if kernel is None:
        return why
    if "numpy" in modules:  # OpenBLAS is loaded already and has read its environment
        return f"OpenBLAS's own choice: NumPy was imported before ddp_edf, too late for {kernel}"
    environ[OPENBLAS_VARIABLE] = kernel
    return why


def loaded_kernel() -> str:
    """What the loaded BLAS reports about itself (after NumPy is imported), e.g. 'openblas 0.3.31 Haswell'."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown BLAS"
    for library in threadpool_info():
        if library.get("user_api") == "blas":
            return f"{library.get('internal_api', 'BLAS')} {library.get('version') or ''} " \
                   f"{library.get('architecture') or ''}".replace("  ", " ").strip()
    return "unknown BLAS"
