"""Wall time to a test accuracy on Fashion-MNIST: ddp_edf against PyTorch DDP, W = 1 and 2.

    benchmarks/setup_peers.sh torch      # once
    .venv/bin/python benchmarks/time_to_accuracy.py [--target 0.88] [--rounds 3] [--plot docs/time_to_accuracy.png]

ddp_edf trains with --config (default configs/fashion_tta.toml: 784-256-10 relu MLP, momentum SGD,
cosine schedule, global batch 256, chosen on the dev split) by the Trainer python -m ddp_edf.train
builds from it (benchmarks/workers/tta_ddp_edf.py under mpiexec -n W).  PyTorch DDP (gloo, CPU,
torchrun) trains the same model on the same 50k images with the same optimizer and schedule; its
batch and learning rate are the best of a small grid (--torch-grid), picked by ITS time to the
target on the test set: generous to PyTorch.
Both clocks start at the first step and pause while the test accuracy is measured after every epoch.
W = 1 runs with every core as BLAS/intra-op threads, W = 2 with one thread per rank.  The time to the
target is the clock at the end of the first epoch whose test accuracy reaches it.  Each round runs
every system once per W, in a rotating order; printed: the median [min-max] over --rounds rounds.
Results: --json (default benchmarks/results/time_to_accuracy.json).
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WORKERS = common.BENCH / "workers"


def run_ddp_edf(world, config):
    threads = max(1, (os.cpu_count() or 1) // world)
    return common.launch_mpi(sys.executable, str(WORKERS / "tta_ddp_edf.py"), world, ["--config", config],
                             threads=threads)["curve"]


def run_torch(world, batch, lr, epochs):
    torchrun = str(Path(common.venv_python("torch")).parent / "torchrun")
    threads = max(1, (os.cpu_count() or 1) // world)
    return common.run_worker([torchrun, "--standalone", f"--nproc_per_node={world}", str(WORKERS / "tta_torch.py"),
                              "--batch", str(batch), "--lr", str(lr), "--epochs", str(epochs)], threads=threads)["curve"]


def time_to(curve, target):
    return next((point["seconds"] for point in curve if point["accuracy"] >= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.88)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", default=str(common.ROOT / "configs" / "fashion_tta.toml"))
    parser.add_argument("--torch-epochs", type=int, default=15)
    parser.add_argument("--torch-grid", nargs="+", default=["256:0.1", "512:0.2", "1024:0.4"],
                        help="batch:lr pairs tried for PyTorch")
    parser.add_argument("--no-torch", action="store_true", help="ddp_edf only")
    parser.add_argument("--json", default=str(common.BENCH / "results" / "time_to_accuracy.json"))
    parser.add_argument("--plot", help="accuracy against wall time into this PNG (needs matplotlib)")
    args = parser.parse_args()
    if not common.FASHION.is_dir():
        sys.exit("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
    systems = {"ddp_edf": lambda world: run_ddp_edf(world, args.config)}
    torch_choice = None
    if args.no_torch:
        print("skipping torch_ddp: --no-torch")
    elif common.venv_python("torch"):
        grid = []
        for pair in args.torch_grid:
            batch, lr = pair.split(":")
            curve = run_torch(2, int(batch), float(lr), args.torch_epochs)
            grid.append((time_to(curve, args.target) or float("inf"), int(batch), float(lr)))
            print(f"torch grid W=2 batch {batch} lr {lr}: {grid[-1][0]:.2f} s to {args.target:.0%}", flush=True)
        _, best_batch, best_lr = min(grid)
        print(f"torch: best batch {best_batch}, lr {best_lr}")
        torch_choice = {"batch": best_batch, "lr": best_lr,
                        "grid_seconds": {f"{b}:{lr}": (t if t != float("inf") else None) for t, b, lr in grid}}
        systems["torch_ddp"] = lambda world: run_torch(world, best_batch, best_lr, args.torch_epochs)
    else:
        print("skipping torch_ddp: not installed (benchmarks/setup_peers.sh torch)")
    curves = {(name, w): [] for name in systems for w in args.worlds}
    for round_index in range(args.rounds):
        names = list(systems)[round_index % len(systems):] + list(systems)[:round_index % len(systems)]
        for world in args.worlds:
            for name in names:
                curve = curves[(name, world)]
                curve.append(systems[name](world))
                reached = time_to(curve[-1], args.target)
                print(f"round {round_index + 1} W={world} {name:9s}: "
                      f"{'not reached' if reached is None else f'{reached:.2f} s'} to {args.target:.0%}, "
                      f"final {curve[-1][-1]['accuracy']:.4f}", flush=True)
    print(f"\n{common.machine_summary()}; median [min-max] over {args.rounds} runs of the seconds to "
          f"{args.target:.0%} test accuracy\n")
    print("| system | W | seconds to target | epochs | final test accuracy |")
    print("|---|--:|--:|--:|--:|")
    summary = {}
    for (name, world), runs in curves.items():
        times = [time_to(c, args.target) for c in runs]
        reached = [t for t in times if t is not None]
        epochs = [next(p["epoch"] for p in c if p["accuracy"] >= args.target) for c in runs if time_to(c, args.target)]
        cell = (f"{statistics.median(reached):.2f} [{min(reached):.2f}-{max(reached):.2f}]" if reached
                else "not reached")
        if reached and len(reached) < len(times):
            cell += f" ({len(times) - len(reached)} of {len(times)} runs did not reach it)"
        summary[f"{name}@{world}"] = statistics.median(reached) if reached else None
        print(f"| {name} | {world} | {cell} | {statistics.median(epochs) if epochs else '-'} | "
              f"{statistics.median(c[-1]['accuracy'] for c in runs):.4f} |")
    for world in args.worlds:
        a, b = summary.get(f"ddp_edf@{world}"), summary.get(f"torch_ddp@{world}")
        if a and b:
            print(f"W={world}: PyTorch DDP takes {b / a:.1f}x ddp_edf's time")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": common.machine_summary(), "target": args.target,
                                           "torch_choice": torch_choice,
                                           "curves": {f"{n}@{w}": c for (n, w), c in curves.items()}}, indent=1))
    if args.plot:
        plot(curves, args.target, args.plot)


def plot(curves, target, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    colors = {"ddp_edf": "#1f77b4", "torch_ddp": "#d62728"}
    for (name, world), runs in curves.items():
        # the run with the median time to target (or the first), drawn as accuracy against wall time
        ranked = sorted(runs, key=lambda c: time_to(c, target) or float("inf"))
        curve = ranked[len(ranked) // 2]
        axis.plot([p["seconds"] for p in curve], [p["accuracy"] for p in curve], marker="o", ms=3,
                  color=colors.get(name, "0.3"), ls="-" if world > 1 else "--", label=f"{name}, W = {world}")
    axis.axhline(target, color="0.5", lw=0.8, ls=":")
    axis.set_xlabel("training wall time, s (test evaluations excluded)")
    axis.set_ylabel("test accuracy after each epoch")
    axis.set_ylim(0.80, 0.90)
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize=8, loc="lower right")
    axis.set_title("Fashion-MNIST, 784-256-10 MLP: accuracy against wall time", fontsize=10)
    figure.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
