"""ddp_edf against the systems a user would pick instead, same model, data, batch, lr and machine.

    benchmarks/setup_peers.sh                      # once: .bench/torch and .bench/chainer
    .venv/bin/python benchmarks/compare_torch_ddp.py [--worlds 1 2] [--batch 256] [--rounds 7] [--baseline REF]

Systems (each skipped, with the reason, when it is not installed):
  ddp_edf      ddp_edf's Trainer.fit under mpiexec                   (benchmarks/workers/ddp_edf_worker.py)
  torch_ddp    PyTorch DistributedDataParallel, gloo, under torchrun (workers/torch_ddp_worker.py)
  chainermn    Chainer 7.8.1 + ChainerMN ('naive' communicator)     (workers/chainermn_worker.py)
  handwritten  NumPy + mpi4py by hand: GEMM backward, one flat Allreduce (workers/handwritten_worker.py)
  ddp_edf@REF  with --baseline REF: ddp_edf and its worker as they are at the git revision REF
               (exported into .bench/), to compare the code with an earlier version in the same run
One BLAS thread per rank.  Each round runs every system once per world size, in a rotating order, so
machine drift spreads over all of them; ratios ddp_edf / other are taken within a round, then the median
over the --rounds rounds of a run; --runs repeats the whole timing (each run's medians are listed).

First, a check that the systems compute the same thing (--check-only: nothing else): each trains
10 steps of the benchmark's batches from one initialisation at every world size, and must land
within 1e-4 (relative) of an independent float64 NumPy reference (common.reference_training) in
the loss on 2000 training images and in how far the parameters moved; else the run stops there.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WORKERS = common.BENCH / "workers"
# Peers whose gradient is the mean of the ranks' shard means: the global mean only for equal shards
SHARD_MEAN_AVERAGERS = ("torch_ddp", "chainermn")


def available_systems(baseline: str | None = None):
    """{name: function(world, worker arguments) -> result} and {name: why it is missing}."""
    systems, missing = {}, {}
    main = sys.executable

    def mpi_system(python, script, extra_env=None):
        return lambda world, arguments: common.launch_mpi(python, str(WORKERS / script), world, arguments,
                                                          extra_env=extra_env)

    systems["ddp_edf"] = mpi_system(main, "ddp_edf_worker.py")
    torch_python = common.venv_python("torch")
    if torch_python:
        torchrun = str(Path(torch_python).parent / "torchrun")
        systems["torch_ddp"] = lambda world, arguments: common.run_worker(
            [torchrun, "--standalone", f"--nproc_per_node={world}", str(WORKERS / "torch_ddp_worker.py"),
             *map(str, arguments)], threads=1)
    else:
        missing["torch_ddp"] = "not installed: benchmarks/setup_peers.sh torch"
    chainer_python = common.venv_python("chainer")
    if chainer_python:
        systems["chainermn"] = mpi_system(chainer_python, "chainermn_worker.py")
    else:
        missing["chainermn"] = "not installed: benchmarks/setup_peers.sh chainer"
    systems["handwritten"] = mpi_system(main, "handwritten_worker.py")
    if baseline:
        tree = export_revision(baseline)
        systems[f"ddp_edf@{baseline}"] = lambda world, arguments: common.launch_mpi(
            main, str(tree / "benchmarks" / "workers" / "ddp_edf_worker.py"), world, arguments,
            extra_env={"PYTHONPATH": os.pathsep.join([str(tree), str(tree / "benchmarks")])})
    return systems, missing


def export_revision(revision: str) -> Path:
    """The package and the benchmarks as they are at a git revision, unpacked under .bench/."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=common.ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    tree = common.ROOT / ".bench" / f"baseline-{commit}"
    if not (tree / "ddp_edf").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "ddp_edf", "benchmarks"], cwd=common.ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def check_same_training(systems: dict, worlds, batch: int, failures: list) -> dict:
    """Every system, at every world size, trains common.CHECK_STEPS steps from one initialisation;
    each must land where common.reference_training (float64 NumPy) lands, or the comparison stops.
    A system whose check crashes twice is dropped from the comparison (the reason is printed)."""
    images, labels = common.load_split("train")
    initial = common.initial_parameters()
    reference = common.reference_training(initial, images, labels, batch)
    print(f"check: {common.CHECK_STEPS} steps from one initialisation, then the loss on the first "
          f"{common.CHECK_EXAMPLES} training images and the distance moved; reference (float64 NumPy): "
          f"loss {reference['loss']:.7f}, moved {reference['moved']:.7f}", flush=True)
    records, wrong = {}, []
    with tempfile.TemporaryDirectory() as folder:
        init_path = Path(folder) / "initial.npz"
        common.save_initial(init_path, initial)
        for name in list(systems):
            for world in worlds:
                label = f"check W={world} {name:12s}"
                result = run_with_retry(lambda: systems[name](world, ["--batch", batch, "--check-init", init_path]),
                                        label, failures)
                if result is None:
                    print(f"{label} crashed twice: {name} left out of the comparison", flush=True)
                    del systems[name]
                    break
                record = records[f"{name}@{world}"] = result["check"]
                mismatch = common.check_mismatch(record, reference)
                print(f"{label} loss {record['loss']:.7f}, moved {record['moved']:.7f}: "
                      f"{'DIFFERENT: ' + mismatch if mismatch else 'same training'}", flush=True)
                if mismatch:
                    wrong.append((name, world, f"{name} at W = {world} ({mismatch})"))
    if wrong:
        uneven = sorted({w for n, w, _ in wrong if batch % w and n in SHARD_MEAN_AVERAGERS})
        hint = (f"; at W = {', '.join(map(str, uneven))} the batch of {batch} does not split evenly, and PyTorch "
                f"DDP and ChainerMN average the ranks' shard means (not the global mean): use world sizes that "
                f"divide the batch") if uneven else ""
        raise SystemExit(f"compare_torch_ddp.py: not the same training as the reference (relative tolerance "
                         f"{common.CHECK_RTOL}): {'; '.join(why for _, _, why in wrong)}; its speed would not compare "
                         f"like with like: fix the worker's model, loss, learning rate or gradient averaging{hint}")
    return {"steps": common.CHECK_STEPS, "examples": common.CHECK_EXAMPLES, "rtol": common.CHECK_RTOL,
            "reference": reference, "systems": records}


def done(values):
    """The values of the runs that did not fail (a failed run is None, so rounds stay aligned)."""
    return [v for v in values if v is not None]


def run_with_retry(run, label: str, failures: list):
    """A peer's run that crashes (gloo has been seen to abort at exit: 'terminate called without an
    active exception') is run again once; if it fails again the round has no figure for it."""
    for attempt in (1, 2):
        try:
            return run()
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            reason = next((line for line in str(error).splitlines()[1:] if line.strip()), str(error).splitlines()[0])
            print(f"{label} failed ({reason.strip()[:160]}); {'retrying once' if attempt == 1 else 'no figure'}",
                  flush=True)
            failures.append({"run": label.strip(), "attempt": attempt, "error": str(error)[-1500:]})
    return None


def time_rounds(systems: dict, args, failures: list):
    """args.rounds rounds, each running every system once per world size in a rotating order:
    ({(system, W): [samples/s per round]}, {(system, W): [ddp_edf / system per round]})."""
    rates = {(name, w): [] for name in systems for w in args.worlds}
    ratios = {(name, w): [] for name in systems if name != "ddp_edf" for w in args.worlds}
    names = list(systems)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for world in args.worlds:
            this_round = {}
            for name in order:
                label = f"round {round_index + 1} W={world} {name:12s}"
                result = run_with_retry(lambda: systems[name](world, ["--batch", args.batch, "--seconds", args.seconds]),
                                        label, failures)
                this_round[name] = rate = result["samples_per_s"] if result else None
                rates[(name, world)].append(rate)
                if rate is not None:
                    print(f"{label} {rate:>10,.0f} samples/s", flush=True)
            for name in this_round:   # None where either run failed twice: rounds stay aligned
                if name != "ddp_edf" and "ddp_edf" in this_round:
                    both = this_round["ddp_edf"] is not None and this_round[name] is not None
                    ratios[(name, world)].append(this_round["ddp_edf"] / this_round[name] if both else None)
    return rates, ratios


def print_table(names, worlds, rates, ratios):
    print("| system | " + " | ".join(f"W = {w} samples/s" for w in worlds) + " | "
          + " | ".join(f"ddp_edf / system, W = {w}" for w in worlds) + " |")
    print("|---|" + "---:|" * (2 * len(worlds)))
    for name in names:
        cells = [common.fmt_rate(done(rates[(name, w)])) if done(rates[(name, w)]) else "failed" for w in worlds]
        cells += ["-" if name == "ddp_edf" else f"{statistics.median(done(ratios[(name, w)])):.2f}x"
                  if done(ratios[(name, w)]) else "-" for w in worlds]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole timing this many times")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per run (after warm-up)")
    parser.add_argument("--systems", nargs="+", help="a subset of the systems")
    parser.add_argument("--json", default=str(common.BENCH / "results" / "compare.json"))
    parser.add_argument("--check-only", action="store_true", help="only check that every system trains alike")
    parser.add_argument("--baseline", metavar="REF", help="also time ddp_edf as it is at this git revision")
    args = parser.parse_args()
    systems, missing = available_systems(args.baseline)
    if args.systems:
        systems = {k: v for k, v in systems.items() if k in args.systems or k.startswith("ddp_edf@")}
    for name, why in missing.items():
        print(f"skipping {name}: {why}")
    check_failures = []
    check = check_same_training(systems, args.worlds, args.batch, check_failures)
    if args.check_only:
        return
    runs = []
    for run in range(1, args.runs + 1):
        failures = []
        rates, ratios = time_rounds(systems, args, failures)
        print(f"\nrun {run}: {common.machine_summary()}; data: {common.data_source()}; global batch {args.batch}; "
              f"1 BLAS thread per rank; median [min-max] of {args.rounds} rounds\n")
        print_table(list(systems), args.worlds, rates, ratios)
        if failures:
            print(f"\n{len(failures)} failed run(s), each retried once: " + "; ".join(f["run"] for f in failures))
        runs.append({"rates": {f"{n}@{w}": v for (n, w), v in rates.items()},
                     "ratios": {f"ddp_edf/{n}@{w}": v for (n, w), v in ratios.items()}, "failures": failures})
    if args.runs > 1:
        print(f"\nddp_edf / system, each run's median over its rounds ({args.runs} runs):")
        for key in runs[0]["ratios"]:
            print(f"  {key}: " + ", ".join(f"{statistics.median(done(r['ratios'][key])):.2f}x" for r in runs
                                           if done(r["ratios"][key])))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "machine": common.machine_summary(), "data": common.data_source(), "batch": args.batch,
        "rounds": args.rounds, "missing": missing, "check": check, "check_failures": check_failures,
        "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
