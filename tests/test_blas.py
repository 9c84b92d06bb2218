"""ddp_edf picks OpenBLAS's kernels before NumPy loads: the rule, the overrides, and that it takes effect."""

import os
import platform
import subprocess
import sys

import pytest

from ddp_edf.blas import choose_openblas_kernel, cpu_facts, preferred_kernel

ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu sse2 avx2 fma avx512f\n"
ZEN2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nflags\t\t: fpu sse2 avx2 fma\n"
ZEN5 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nflags\t\t: fpu avx2 fma avx512f\n"
SKYLAKE_X = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nflags\t\t: fpu avx2 fma avx512f\n"


def test_cpu_facts_reads_the_first_processor_only():
    two = ZEN4 + "\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: sse2\n"
    assert cpu_facts(two) == {"vendor": "AuthenticAMD", "family": "25",
                              "flags": {"fpu", "sse2", "avx2", "fma", "avx512f"}}
    assert cpu_facts("") == {"vendor": "", "family": "", "flags": set()}


@pytest.mark.parametrize("cpuinfo, expected", [(ZEN4, "Haswell"), (ZEN2, None), (ZEN5, None), (SKYLAKE_X, None),
                                               ("", None)])
def test_the_rule_asks_for_haswell_kernels_on_zen4_only(cpuinfo, expected):
    kernel, why = preferred_kernel({}, cpuinfo)
    assert kernel == expected
    assert ("Zen 4" in why) == (expected is not None)


def test_the_user_decides_over_the_rule():
    assert preferred_kernel({"OPENBLAS_CORETYPE": "Sandybridge"}, ZEN4)[0] is None   # theirs stays
    assert preferred_kernel({"DDP_EDF_BLAS_KERNEL": "native"}, ZEN4)[0] is None
    assert preferred_kernel({"DDP_EDF_BLAS_KERNEL": "Zen"}, SKYLAKE_X)[0] == "Zen"
    assert preferred_kernel({"DDP_EDF_BLAS_KERNEL": "auto"}, ZEN4)[0] == "Haswell"


def test_the_choice_is_set_only_before_numpy_is_loaded(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN4)
    environ = {}
    note = choose_openblas_kernel(environ, modules={}, cpuinfo_path=str(cpuinfo))
    assert environ == {"OPENBLAS_CORETYPE": "Haswell"} and "Zen 4" in note
    environ = {}
    note = choose_openblas_kernel(environ, modules={"numpy": object()}, cpuinfo_path=str(cpuinfo))
    assert environ == {} and "too late" in note
    environ = {}
    assert choose_openblas_kernel(environ, modules={}, cpuinfo_path=str(tmp_path / "missing")) and environ == {}


def loaded_architecture(env_extra, import_ddp_edf_first=True):
    """The OpenBLAS kernel family a fresh interpreter ends up with."""
    first = "import ddp_edf, numpy" if import_ddp_edf_first else "import numpy, ddp_edf"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "DDP_EDF_BLAS_KERNEL")}
    env.update(env_extra)
    code = f"{first}; from threadpoolctl import threadpool_info; " \
           "print([lib['architecture'] for lib in threadpool_info() if lib['user_api'] == 'blas'][0])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


needs_x86_openblas = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                        reason="the kernel names tested are OpenBLAS's x86-64 ones")


@needs_x86_openblas
def test_importing_ddp_edf_first_applies_the_choice():
    native = loaded_architecture({"DDP_EDF_BLAS_KERNEL": "native"})
    assert loaded_architecture({"DDP_EDF_BLAS_KERNEL": "Haswell"}) == "Haswell"
    # NumPy first: too late, OpenBLAS keeps its own choice
    assert loaded_architecture({"DDP_EDF_BLAS_KERNEL": "Haswell"}, import_ddp_edf_first=False) == native
    # auto: whatever the rule says for this machine's CPU
    with open("/proc/cpuinfo") as handle:
        wanted = preferred_kernel({}, handle.read())[0]
    assert loaded_architecture({}) == (wanted or native)
