"""Wall time to a test accuracy on Fashion-MNIST: ddp_edf against PyTorch DDP, W = 1 and 2.

    benchmarks/setup_peers.sh torch      # once
    .venv/bin/python benchmarks/time_to_accuracy.py [--target 0.88] [--rounds 3] [--plot docs/time_to_accuracy.png]
    .venv/bin/python benchmarks/time_to_accuracy.py --model cnn      # the CNN to 91%: configs/fashion_cnn.toml

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

--model cnn: the CNN of configs/fashion_cnn.toml (dropout 0.25, momentum SGD, warm-up and cosine) to 91%,
PyTorch's the same CNN, dropout, optimizer and schedule (workers/cnn_torch.py).  BOTH systems take their
best global batch and learning rate from the grid, at W = 2 (the grid's runs are round 1's W = 2 runs);
every run stops after the epoch that reaches the target.  Results: benchmarks/results/time_to_accuracy_cnn.json.
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


MODELS = {   # what --model chooses: config, target, grid (batch:lr), PyTorch's worker arguments, early stop
    "mlp": {"config": "fashion_tta.toml", "target": 0.88, "grid": ["256:0.1", "512:0.2", "1024:0.4"],
            "torch": [], "torch_epochs": 15, "grid_both": False, "json": "time_to_accuracy.json"},
    "cnn": {"config": "fashion_cnn.toml", "target": 0.91, "grid": ["64:0.025", "128:0.05", "256:0.1"],
            "torch": ["--model", "cnn", "--dropout", "0.25", "--warmup-steps", "200"], "torch_epochs": 10,
            "grid_both": True, "json": "time_to_accuracy_cnn.json"},
}


def run_ddp_edf(world, config, batch=None, lr=None, stop_at=2.0):
    threads = max(1, (os.cpu_count() or 1) // world)
    chosen = ["--set", f"train.global_batch={batch}", "--set", f"optim.lr={lr}"] if batch else []
    return common.launch_mpi(sys.executable, str(WORKERS / "tta_ddp_edf.py"), world,
                             ["--config", config, "--stop-at", stop_at, *chosen], threads=threads, timeout=3600)["curve"]


def run_torch(world, batch, lr, epochs, extra=(), stop_at=2.0):
    torchrun = str(Path(common.venv_python("torch")).parent / "torchrun")
    threads = max(1, (os.cpu_count() or 1) // world)
    return common.run_worker([torchrun, "--standalone", f"--nproc_per_node={world}", str(WORKERS / "tta_torch.py"),
                              "--batch", str(batch), "--lr", str(lr), "--epochs", str(epochs), *extra,
                              "--stop-at", str(stop_at)], threads=threads, timeout=3600)["curve"]


def best_of_grid(name, run, grid, target):
    """(batch, lr, {pair: seconds}, curve of the best): each batch:lr pair trained once at W = 2."""
    results = []
    for pair in grid:
        batch, lr = pair.split(":")
        curve = run(int(batch), float(lr))
        results.append((time_to(curve, target) or float("inf"), int(batch), float(lr), curve))
        print(f"{name} grid W=2 batch {batch} lr {lr}: {results[-1][0]:.2f} s to {target:.0%}", flush=True)
    seconds, batch, lr, curve = min(results, key=lambda r: r[0])
    print(f"{name}: best batch {batch}, lr {lr}")
    return batch, lr, {f"{b}:{l}": (t if t != float("inf") else None) for t, b, l, _ in results}, curve


def time_to(curve, target):
    return next((point["seconds"] for point in curve if point["accuracy"] >= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="mlp")
    parser.add_argument("--target", type=float, help="default: 0.88 (mlp), 0.91 (cnn)")
    parser.add_argument("--rounds", type=int, help="default: 3 (mlp), 1 (cnn)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", help="default: configs/fashion_tta.toml (mlp), configs/fashion_cnn.toml (cnn)")
    parser.add_argument("--torch-epochs", type=int)
    parser.add_argument("--torch-grid", nargs="+", help="batch:lr pairs tried (for ddp_edf too with --model cnn)")
    parser.add_argument("--no-torch", action="store_true", help="ddp_edf only")
    parser.add_argument("--json", help="default: benchmarks/results/time_to_accuracy[_cnn].json")
    parser.add_argument("--plot", help="accuracy against wall time into this PNG (needs matplotlib)")
    args = parser.parse_args()
    chosen = MODELS[args.model]
    args.target = args.target or chosen["target"]
    args.rounds = args.rounds or (3 if args.model == "mlp" else 1)
    args.config = args.config or str(common.ROOT / "configs" / chosen["config"])
    args.torch_epochs = args.torch_epochs or chosen["torch_epochs"]
    args.torch_grid = args.torch_grid or chosen["grid"]
    args.json = args.json or str(common.BENCH / "results" / chosen["json"])
    stop_at = args.target if chosen["grid_both"] else 2.0
    if not common.FASHION.is_dir():
        sys.exit("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
    systems, choices, first_round = {}, {}, {}
    if chosen["grid_both"]:
        batch, lr, grid, first_round["ddp_edf"] = best_of_grid(
            "ddp_edf", lambda b, l: run_ddp_edf(2, args.config, b, l, stop_at), args.torch_grid, args.target)
        choices["ddp_edf"] = {"batch": batch, "lr": lr, "grid_seconds": grid}
        systems["ddp_edf"] = lambda world, b=batch, l=lr: run_ddp_edf(world, args.config, b, l, stop_at)
    else:
        systems["ddp_edf"] = lambda world: run_ddp_edf(world, args.config)
    if args.no_torch:
        print("skipping torch_ddp: --no-torch")
    elif common.venv_python("torch"):
        batch, lr, grid, first_round["torch_ddp"] = best_of_grid(
            "torch", lambda b, l: run_torch(2, b, l, args.torch_epochs, chosen["torch"], stop_at),
            args.torch_grid, args.target)
        choices["torch_ddp"] = {"batch": batch, "lr": lr, "grid_seconds": grid}
        systems["torch_ddp"] = lambda world, b=batch, l=lr: run_torch(world, b, l, args.torch_epochs,
                                                                       chosen["torch"], stop_at)
    else:
        print("skipping torch_ddp: not installed (benchmarks/setup_peers.sh torch)")
    curves = {(name, w): [] for name in systems for w in args.worlds}
    for round_index in range(args.rounds):
        names = list(systems)[round_index % len(systems):] + list(systems)[:round_index % len(systems)]
        for world in args.worlds:
            for name in names:
                curve = curves[(name, world)]
                reuse = chosen["grid_both"] and round_index == 0 and world == 2   # the grid's run (cnn)
                curve.append(first_round[name] if reuse else systems[name](world))
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
                                           "model": args.model, "choices": choices,
                                           "curves": {f"{n}@{w}": c for (n, w), c in curves.items()}}, indent=1))
    if args.plot:
        plot(curves, args.target, args.plot, args.model)


def plot(curves, target, path, model="mlp"):
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
    axis.set_ylim(*((0.80, 0.90) if model == "mlp" else (0.85, 0.93)))
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize=8, loc="lower right")
    axis.set_title(f"Fashion-MNIST, {'784-256-10 MLP' if model == 'mlp' else 'CNN'}: accuracy against wall time",
                   fontsize=10)
    figure.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
