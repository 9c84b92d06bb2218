"""Which OpenBLAS kernels run this model's GEMMs fastest on this CPU (the evidence behind ddp_edf/blas.py).

    .venv/bin/python benchmarks/blas_kernels.py [--rows 128 256] [--rounds 5] [--kernels Haswell SkylakeX ...]

For each kernel family (OpenBLAS's own choice for this CPU, then every OPENBLAS_CORETYPE given), a
fresh interpreter times one training step's five GEMMs (roofline.gemm_seconds: x W0, h W1, ds W1^T,
h^T ds, x^T dh) for a shard of `rows` examples, one BLAS thread.  Rounds alternate the kernels so
machine drift spreads evenly; the table gives the median GFLOP/s and the ratio to OpenBLAS's own
choice measured in the same round.  A kernel the CPU cannot run (illegal instruction) is reported.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import roofline  # noqa: E402

NATIVE = "native"


def time_kernel(kernel: str, rows: int, repeats: int) -> dict:
    """{'seconds': s, 'architecture': name} from a fresh interpreter, or {'error': why}."""
    code = ("import sys; sys.path.insert(0, %r); import roofline, common; s = roofline.gemm_seconds(%d, %d); "
            "common.emit({'seconds': s, 'architecture': common.blas_kernel()})" % (str(common.BENCH), rows, repeats))
    extra = {} if kernel == NATIVE else {"OPENBLAS_CORETYPE": kernel}
    try:
        return common.run_worker([sys.executable, "-c", code], threads=1, extra_env=extra, timeout=300)
    except RuntimeError as error:
        return {"error": str(error).splitlines()[0][:200]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 256], help="examples per rank (B / W)")
    parser.add_argument("--kernels", nargs="+", default=["Haswell", "Zen", "SkylakeX", "Cooperlake"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200, help="steps per timing inside a run")
    parser.add_argument("--json", default=str(common.BENCH / "results" / "blas_kernels.json"))
    args = parser.parse_args()
    if os.environ.get("OPENBLAS_CORETYPE"):
        print("note: OPENBLAS_CORETYPE is set in this shell; 'native' below is that choice")
    kernels = [NATIVE, *[k for k in args.kernels if k != NATIVE]]
    flops = roofline.flops_per_sample()
    seconds = {(k, r): [] for k in kernels for r in args.rows}
    ratios = {(k, r): [] for k in kernels for r in args.rows}
    architecture, failed = {}, {}
    for round_index in range(args.rounds):
        order = kernels[round_index % len(kernels):] + kernels[:round_index % len(kernels)]
        for rows in args.rows:
            this_round = {}
            for kernel in order:
                if kernel in failed:
                    continue
                result = time_kernel(kernel, rows, args.repeats)
                if "error" in result:
                    failed[kernel] = result["error"]
                    continue
                architecture[kernel] = result["architecture"]
                this_round[kernel] = result["seconds"]
                seconds[(kernel, rows)].append(result["seconds"])
            for kernel, value in this_round.items():
                if NATIVE in this_round:
                    ratios[(kernel, rows)].append(this_round[NATIVE] / value)
        print(f"round {round_index + 1}: " + ", ".join(
            f"{k} {statistics.median(seconds[(k, args.rows[0])]) * 1e3:.3f} ms" for k in kernels
            if seconds[(k, args.rows[0])]), flush=True)

    print(f"\n{common.machine_summary()}; one BLAS thread; one step's GEMMs for a shard of R rows "
          f"({flops:,} FLOPs per example); median of {args.rounds} rounds\n")
    print("| kernels (OPENBLAS_CORETYPE) | loaded | " + " | ".join(f"R = {r}: GFLOP/s" for r in args.rows) + " | "
          + " | ".join(f"R = {r}: speed vs native" for r in args.rows) + " |")
    print("|---|---|" + "---:|" * (2 * len(args.rows)))
    for kernel in kernels:
        if kernel in failed:
            print(f"| {kernel} | fails on this CPU: {failed[kernel]} |" + " |" * (2 * len(args.rows)))
            continue
        rates = [f"{r * flops / statistics.median(seconds[(kernel, r)]) / 1e9:.1f}" for r in args.rows]
        speed = [f"{statistics.median(ratios[(kernel, r)]):.3f}x" for r in args.rows]
        print(f"| {kernel} | {architecture[kernel]} | " + " | ".join(rates + speed) + " |")
    print(f"\nddp_edf's choice on this machine (ddp_edf/blas.py): {common.ddp_edf_blas_kernel() or 'native'}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": common.machine_summary(), "flops_per_sample": flops, "architecture": architecture,
        "failed": failed, "ddp_edf_choice": common.ddp_edf_blas_kernel(),
        "seconds": {f"{k}@{r}": v for (k, r), v in seconds.items()},
        "speed_vs_native": {f"{k}@{r}": v for (k, r), v in ratios.items()}}, indent=1))


if __name__ == "__main__":
    main()
