"""Interleaved A/B of ddp_edf's training step: the package at a git revision against the working tree.

    .venv/bin/python benchmarks/ab_trainer.py --rev HEAD~1 [--world 2] [--batch 256] [--blocks 24]
                                              [--steps 300] [--new-first] [--set dist.ring_mb=0 ...]

On the development VM the machine's drift between runs (its normal and slow states,
docs/performance.md) is larger than most levers, so two separate runs say little.  Here ONE
W-rank job builds two Trainers on the same data and config: "old" from ddp_edf as it was at --rev
(`git archive` into a temporary directory, imported under another name; the package imports
itself relatively), "new" from the working tree.  Blocks of --steps calls of `train_step`
alternate between them, the order swapped every block, and each block pair is labelled by an MPI
Allreduce probe (~0.12 ms normal, ~0.45 ms slow there).  Printed: the median step of each, and the
median of the per-block ratios old / new over the normal-state and the slow-state blocks.
A Trainer built second ran ~0.7% faster in A/A runs of this kind: run both ways (--new-first).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

OLD_NAME = "ddp_edf_old"


def export_revision(rev: str, into: Path) -> Path:
    """ddp_edf as it was at ``rev``, unpacked as package OLD_NAME under ``into``."""
    archive = subprocess.run(["git", "archive", rev, "ddp_edf"], cwd=common.ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "ddp_edf").rename(into / OLD_NAME)
    return into


def mpi_job(old_path: str, batch: int, blocks: int, steps: int, new_first: bool, overrides: list[str]):
    """Under mpiexec: both Trainers, alternating blocks; rank 0 emits per-block medians and probes."""
    sys.path.insert(0, old_path)
    sys.path.insert(0, str(common.ROOT))
    sys.path.insert(0, str(common.BENCH / "workers"))
    import ddp_edf  # noqa: F401  (picks the BLAS kernels before NumPy loads)
    import importlib

    import numpy as np
    from ddp_edf.data import epoch_permutation
    from ddp_edf.data.sampler import global_batch
    from ddp_edf.dist.comm import make_comm
    from ddp_edf.dist.threads import configure_blas_threads
    from ddp_edf_worker import CapturingReporter, benchmark_config, dataset_name

    packages = {"old": importlib.import_module(f"{OLD_NAME}.trainer"), "new": importlib.import_module("ddp_edf.trainer")}
    comm = make_comm("mpi")
    configure_blas_threads(comm.local_size)
    dataset = comm.broadcast_obj(dataset_name() if comm.is_root else None)
    trainers = {}
    for name in (("new", "old") if new_first else ("old", "new")):
        trainers[name] = packages[name].Trainer(benchmark_config(dataset, batch, *overrides), comm, CapturingReporter())
    permutation = epoch_permutation(0, 0, len(trainers["new"].dataset.train))
    batches = len(permutation) // batch
    counters = {"old": 0, "new": 0}

    def block(name: str, n: int) -> float:
        """The median of n steps of one Trainer (each on the next batch of the epoch's order)."""
        trainer, module = trainers[name], packages[name]
        totals, times = module.Totals(), module.StepTimes()

        def step():
            trainer.train_step(global_batch(permutation, counters[name] % batches, batch), times, totals)
            counters[name] += 1
        return common.median_duration(step, n)

    probe_buffer = np.zeros(common.GRADIENT, np.float32)

    block("old", 100)
    block("new", 100)   # warm-up
    results, probes = {"old": [], "new": []}, []
    for k in range(blocks):
        probes.append(common.allreduce_probe(comm.comm, probe_buffer, comm.MPI))
        for name in (("old", "new") if k % 2 == 0 else ("new", "old")):
            comm.comm.Barrier()
            results[name].append(block(name, steps))
    if comm.is_root:
        common.emit({"probes": probes, **results})


def summary(job: dict) -> dict:
    """Medians and the per-block ratios old / new, by the state each block pair began in."""
    fastest = min(job["probes"])
    ratios = [o / n for o, n in zip(job["old"], job["new"])]
    normal = [common.in_normal_state(p, fastest) for p in job["probes"]]
    by_state = {"normal": [r for r, n in zip(ratios, normal) if n], "slow": [r for r, n in zip(ratios, normal) if not n]}
    return {"old_ms": 1e3 * statistics.median(job["old"]), "new_ms": 1e3 * statistics.median(job["new"]),
            "ratio_all": statistics.median(ratios), "new_faster_blocks": sum(r > 1 for r in ratios),
            "blocks": len(ratios),
            **{f"ratio_{state}": (statistics.median(v) if v else None) for state, v in by_state.items()},
            **{f"blocks_{state}": len(v) for state, v in by_state.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="git revision of the 'old' package (default HEAD)")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--steps", type=int, default=300, help="steps per block")
    parser.add_argument("--new-first", action="store_true", help="build the working tree's Trainer first")
    parser.add_argument("--set", action="append", default=[], help="config override for both, e.g. dist.ring_mb=0")
    parser.add_argument("--json", help="write the per-block results and the summary here")
    parser.add_argument("--mpi-job", metavar="OLD_PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mpi_job:
        return mpi_job(args.mpi_job, args.batch, args.blocks, args.steps, args.new_first, args.set)
    kernel = common.ddp_edf_blas_kernel()
    with tempfile.TemporaryDirectory() as folder:
        old_path = export_revision(args.rev, Path(folder))
        command = [common.mpiexec_for(sys.executable), "-n", str(args.world), sys.executable, __file__,
                   "--mpi-job", str(old_path), "--batch", str(args.batch), "--blocks", str(args.blocks),
                   "--steps", str(args.steps), *(["--new-first"] if args.new_first else []),
                   *(f"--set={override}" for override in args.set)]
        job = common.run_worker(command, threads=1, extra_env={"OPENBLAS_CORETYPE": kernel} if kernel else {})
    result = summary(job)
    print(f"{common.machine_summary()}; W = {args.world}, global batch {args.batch}; old = ddp_edf at {args.rev}, "
          f"new = the working tree ({'built first' if args.new_first else 'built second'}); "
          f"{args.blocks} blocks of {args.steps} steps each")
    print("probe ms  " + " ".join(f"{1e3 * p:.2f}" for p in job["probes"]))
    print("old ms    " + " ".join(f"{1e3 * t:.3f}" for t in job["old"]))
    print("new ms    " + " ".join(f"{1e3 * t:.3f}" for t in job["new"]))

    def ratio(state):
        value = result[f"ratio_{state}"]
        return f"{value:.4f} ({result[f'blocks_{state}']} blocks)" if value is not None else "no block"
    print(f"median step: old {result['old_ms']:.3f} ms, new {result['new_ms']:.3f} ms; old / new per block: "
          f"all {result['ratio_all']:.4f} (new faster in {result['new_faster_blocks']} of {result['blocks']}), "
          f"normal state {ratio('normal')}, slow state {ratio('slow')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rev": args.rev, "args": vars(args), "job": job, "summary": result},
                                              indent=1))


if __name__ == "__main__":
    main()
