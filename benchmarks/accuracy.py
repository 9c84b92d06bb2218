"""Test accuracy of the image models over seeds: the CNN and the ViT on Fashion-MNIST, the CNN on the digits.

    .venv/bin/python benchmarks/accuracy.py [--seeds 1 2 3] [--world 2] [--only fashion_cnn ...]

Each config in configs/ is trained as ``python -m ddp_edf.train`` would train it (the Trainer its
build_trainer makes, benchmarks/workers/tta_ddp_edf.py) on --world ranks, with train.seed and
model.init_seed both set to each seed (another initialisation, epoch order and dropout masks); the
test accuracy is measured after every epoch with the clock paused.  Printed: the final test accuracy
(median [min-max] over the seeds), the target it is held to, and for the Fashion-MNIST CNN the wall time
to 91%.  Results: --json (default benchmarks/results/accuracy.json).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# config -> (target test accuracy, its dataset needs Fashion-MNIST)
RUNS = {"fashion_cnn": (0.915, True), "fashion_vit": (0.87, True), "digits_cnn": (0.98, False)}


def train(config: str, seed: int, world: int, overrides=()) -> list:
    return common.launch_mpi(sys.executable, str(common.BENCH / "workers" / "tta_ddp_edf.py"), world,
                             ["--config", str(common.ROOT / "configs" / f"{config}.toml"),
                              "--set", f"train.seed={seed}", "--set", f"model.init_seed={seed}",
                              *(word for key in overrides for word in ("--set", key))], timeout=3600)["curve"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="a subset of the configs")
    parser.add_argument("--set", action="append", default=[], help="a config override for every run")
    parser.add_argument("--json", default=str(common.BENCH / "results" / "accuracy.json"))
    args = parser.parse_args()
    curves = {}
    for config in args.only or RUNS:
        if RUNS[config][1] and not common.FASHION.is_dir():
            print(f"skipping {config}: needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
            continue
        for seed in args.seeds:
            curve = curves.setdefault(config, {})[seed] = train(config, seed, args.world, args.set)
            print(f"{config} seed {seed}: test accuracy {curve[-1]['accuracy']:.4f} after {curve[-1]['epoch']} "
                  f"epochs, {curve[-1]['seconds']:.0f} s", flush=True)
    print(f"\n{common.machine_summary()}; W = {args.world}; median [min-max] over seeds {args.seeds}\n")
    print("| config | test accuracy | target | met | training time, s | time to 91%, s |\n|---|--:|--:|:-:|--:|--:|")
    summary = {}
    for config, runs in curves.items():
        final = [c[-1]["accuracy"] for c in runs.values()]
        seconds = [c[-1]["seconds"] for c in runs.values()]
        to_91 = [next((p["seconds"] for p in c if p["accuracy"] >= 0.91), None) for c in runs.values()]
        median, low, high = common.median_and_range(final)
        target = RUNS[config][0]
        reached = [t for t in to_91 if t is not None]
        summary[config] = {"final": final, "target": target, "met": low >= target, "seconds": seconds,
                           "seconds_to_91": to_91}
        print(f"| {config} | {median:.4f} [{low:.4f}-{high:.4f}] | {target} | {'yes' if low >= target else 'NO'} | "
              f"{statistics.median(seconds):.0f} | "
              f"{f'{statistics.median(reached):.0f} ({len(reached)}/{len(to_91)} runs)' if reached else '-'} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": common.machine_summary(), "world": args.world,
                                           "seeds": args.seeds, "summary": summary,
                                           "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
