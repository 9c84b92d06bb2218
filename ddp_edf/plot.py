"""python -m ddp_edf.plot OUT [--output FILE]: learning curves of a run into OUT/curves.png.

Two panels against the training step: cross-entropy loss and error rate, for the train figures
(averages over each logging interval) and the dev evaluations, with the final test figure marked.
Reads OUT/metrics.jsonl only; needs the plot extra (pip install -e '.[plot]').
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class PlotError(RuntimeError):
    pass


def read_metrics(out_dir) -> dict:
    """{split: [(step, record), ...]} sorted by step; a step logged twice (a resumed run) keeps its last record."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path} not found: give the OUT folder of a run (it holds metrics.jsonl)")
    by_split: dict = {}
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise PlotError(f"{path} is not a text file of JSON records: give the OUT folder of a ddp_edf run") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not is_record(record):
                raise ValueError
            by_split.setdefault(record["split"], {})[record["step"]] = record
        except ValueError:
            if number == len(lines):
                continue  # a last line cut short by a kill: ignore it
            raise PlotError(f"{path}:{number} is not a metrics record (step, split, numeric loss): "
                            f"{line[:80]!r}") from None
    if not by_split:
        raise PlotError(f"{path} holds no records yet: plot again once the run has logged")
    return {split: sorted(records.items()) for split, records in by_split.items()}


def is_record(record) -> bool:
    """A metrics record: an integer step and epoch, a split name, a numeric loss (and error, if any)."""
    def number(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return (isinstance(record, dict) and isinstance(record.get("split"), str) and isinstance(record.get("step"), int)
            and isinstance(record.get("epoch", 0), int) and number(record.get("loss"))
            and number(record.get("error", 0.0)))


STYLE = {"train": dict(color="#1f77b4", lw=1.2, marker=".", ms=3, label="train (interval mean)"),
         "dev": dict(color="#d62728", lw=1.8, marker="o", ms=3.5, label="dev")}


def draw(metrics: dict, title: str, output: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install -e '.[plot]' (or pip install matplotlib)") from None
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    epoch_ends = {}
    for points in metrics.values():
        for step, record in points:
            epoch_ends[record.get("epoch", 0)] = max(step, epoch_ends.get(record.get("epoch", 0), 0))
    for axis, key, ylabel in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "error", "error rate")):
        for split in ("train", "dev"):
            points = [(s, r) for s, r in metrics.get(split, []) if key in r]   # a model may have no error
            if points:
                axis.plot([s for s, _ in points], [r[key] for _, r in points], **STYLE[split])
        for step, record in [(s, r) for s, r in metrics.get("test", []) if key in r][-1:]:
            axis.plot([step], [record[key]], "k*", ms=11, label=f"test {record[key]:.4f}", zorder=5)
        for end in sorted(epoch_ends.values())[:-1]:
            axis.axvline(end, color="0.6", lw=0.8, ls=":")  # epoch boundaries
        axis.set_xlabel("step (dotted: end of an epoch)" if len(epoch_ends) > 1 else "step")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(frameon=False)
        values = [r[key] for split in ("train", "dev", "test") for _, r in metrics.get(split, []) if key in r]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_yscale("log")  # early losses would flatten the end of training, where the interest is
    epochs = max(epoch_ends) + 1
    figure.suptitle(f"{title}  ({epochs} epoch{'s' * (epochs > 1)})", fontsize=11)
    try:
        figure.savefig(output, dpi=130)
    except ValueError as error:        # an image type matplotlib does not write
        raise PlotError(f"--output {output}: {error}; end the name with one of "
                        f".{', .'.join(sorted(figure.canvas.get_supported_filetypes()))}") from None
    except OSError as error:
        raise PlotError(f"cannot write {output} ({error.strerror}): give another --output") from None
    finally:
        plt.close(figure)


def describe_run(out_dir) -> str:
    """'OUT-name: dataset, model, batch' from OUT/config.toml when it is there."""
    title = Path(out_dir).resolve().name
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        config = tomllib.loads((Path(out_dir) / "config.toml").read_text())
        model, data, train = config["model"], config["data"], config["train"]
        widths = "-".join(str(w) for w in model["hidden"]) if model["kind"] != "logreg" else ""
        return (f"{title}: {data['dataset']}, {model['kind']} {widths}, "
                f"global batch {train['global_batch']}").replace("  ", " ")
    except (OSError, KeyError, ValueError, TypeError):   # no config.toml, or one not written by ddp_edf
        return title


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddp_edf.plot", description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT", help="the run folder (holds metrics.jsonl)")
    parser.add_argument("--output", help="image file (default: OUT/curves.png)")
    args = parser.parse_args(argv)
    output = Path(args.output or Path(args.out) / "curves.png")
    try:
        metrics = read_metrics(args.out)
        if not output.parent.is_dir():
            problem = "is a file" if output.parent.exists() else "does not exist"
            raise PlotError(f"--output {output}: {output.parent} {problem}: give an existing folder")
        if output.is_dir():
            raise PlotError(f"--output {output} is a folder: give an image file name (e.g. {output}/curves.png)")
        draw(metrics, describe_run(args.out), output)
    except PlotError as error:
        print(f"ddp_edf: error: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
