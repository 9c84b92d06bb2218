"""Steady-state training throughput of ddp_edf: samples/s against world size and global batch.

    .venv/bin/python benchmarks/throughput.py [--worlds 1 2 4] [--batches 64 256 1024] [--runs 3] [--plot FILE]
    .venv/bin/python benchmarks/throughput.py --replot --plot FILE     # redraw from the saved --json

The 784-256-10 relu MLP, SGD with momentum, float32, Fashion-MNIST's 60k training images (or random
MNIST-shaped ones), trained by Trainer.fit under mpiexec -n W (benchmarks/workers/ddp_edf_worker.py).
One BLAS thread per rank; W = 1 is also run with every core as BLAS threads.  Each configuration
runs --runs times (>= --seconds timed after a warm-up), the configurations interleaved run by run;
printed: the median [min-max] samples/s, and W = 2 / W = 1 per batch.  With more ranks than cores
the ranks share cores (oversubscribed).  Results: --json (default benchmarks/results/throughput.json).
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WORKER = str(common.BENCH / "workers" / "ddp_edf_worker.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", default=str(common.BENCH / "results" / "throughput.json"))
    parser.add_argument("--plot", help="also draw samples/s against W into this PNG (needs matplotlib)")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from the saved --json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if args.replot:
        if not args.plot:
            parser.error("--replot needs --plot FILE")
        return plot(json.loads(Path(args.json).read_text())["results"], args.plot, cores)
    configs = [(w, b, 1) for b in args.batches for w in args.worlds]
    if cores > 1 and 1 in args.worlds:
        configs += [(1, b, cores) for b in args.batches]
    results = {c: [] for c in configs}
    for run in range(args.runs):
        for world, batch, threads in configs:
            rate = common.launch_mpi(sys.executable, WORKER, world, ["--batch", batch, "--seconds", args.seconds],
                                     threads=threads)["samples_per_s"]
            results[(world, batch, threads)].append(rate)
            print(f"run {run + 1}: W={world} B={batch} threads/rank={threads}: {rate:,.0f} samples/s", flush=True)

    print(f"\n{common.machine_summary()}; data: {common.data_source()}; median [min-max] of {args.runs} runs\n")
    print("| W | BLAS threads/rank | global batch | samples/s |")
    print("|--:|--:|--:|--:|")
    table = []
    for (world, batch, threads), rates in results.items():
        table.append({"world": world, "batch": batch, "threads": threads, "rates": rates})
        print(f"| {world} | {threads} | {batch} | {common.fmt_rate(rates)} |")
    for batch in args.batches:
        if 1 in args.worlds and 2 in args.worlds:
            one, two = (statistics.median(results[(w, batch, 1)]) for w in (1, 2))
            print(f"B={batch}: W=2 / W=1 (one thread per rank) = {two / one:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": common.machine_summary(), "data": common.data_source(),
                                           "results": table}, indent=1))
    if args.plot:
        plot(table, args.plot, cores)


def plot(table, path, cores):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (FuncFormatter below)
    figure, axis = plt.subplots(figsize=(7.5, 4), constrained_layout=True)
    for batch in sorted({row["batch"] for row in table}):
        rows = sorted((r for r in table if r["batch"] == batch and r["threads"] == 1), key=lambda r: r["world"])
        worlds = [r["world"] for r in rows]
        medians = [statistics.median(r["rates"]) for r in rows]
        low = [m - min(r["rates"]) for m, r in zip(medians, rows)]
        high = [max(r["rates"]) - m for m, r in zip(medians, rows)]
        line = axis.errorbar(worlds, medians, yerr=[low, high], marker="o", capsize=3, label=f"B = {batch}")
        threaded = [r for r in table if r["batch"] == batch and r["threads"] > 1]
        if threaded:
            axis.plot([1], [statistics.median(threaded[0]["rates"])], marker="s", ls="none", mfc="none",
                      color=line[0].get_color(), ms=9)
    axis.plot([], [], marker="s", ls="none", mfc="none", color="0.3", label=f"W = 1 with {cores} BLAS threads")
    axis.set_ylim(bottom=0)
    axis.axvline(cores, color="0.7", ls=":", lw=1)
    axis.text(cores, axis.get_ylim()[0], f" {cores} cores", color="0.4", va="bottom", fontsize=8)
    axis.set_xlabel("ranks W (one BLAS thread each)")
    axis.set_ylabel("training samples/s (median, min-max)")
    axis.set_xticks(sorted({r["world"] for r in table}))
    axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.set_title("ddp_edf, 784-256-10 MLP, Fashion-MNIST", fontsize=10)
    figure.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
