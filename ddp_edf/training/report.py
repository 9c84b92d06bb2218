"""Rank 0's voice: console lines, OUT/train.log, OUT/metrics.jsonl and a progress bar on a TTY.

Library code never prints; the trainer reports through one Reporter, which is silent on other
ranks.  Without an OUT folder nothing is written; ``echo=False`` keeps the console quiet too.
"""

from __future__ import annotations

import json
import os
import sys
import time


class Reporter:
    def __init__(self, out_dir=None, enabled: bool = True, echo: bool = True):
        self.enabled, self.echo = enabled, echo
        self.start = time.perf_counter()
        self._bar = self._log = self._metrics = None
        if enabled and out_dir:
            os.makedirs(out_dir, exist_ok=True)
            self._log = open(os.path.join(out_dir, "train.log"), "a", buffering=1)
            self._metrics = open(os.path.join(out_dir, "metrics.jsonl"), "a", buffering=1)

    def start_progress(self, total_steps: int, done: int = 0):
        """A tqdm progress bar over the run's steps, when stderr is a terminal and tqdm is installed."""
        if not (self.enabled and self.echo and sys.stderr.isatty()):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total_steps, initial=done, unit="step", dynamic_ncols=True, leave=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str):
        if not self.enabled:
            return
        line = f"[{self.elapsed():8.1f}s] {message}"
        if self.echo and self._bar is not None:
            self._bar.write(line)
        elif self.echo:
            print(line, flush=True)
        if self._log:
            self._log.write(line + "\n")

    def record(self, step: int, epoch: int, split: str, figures: dict, **extra):
        """One line of metrics.jsonl: where in the run, the split's figures (loss, error), extras."""
        if self._metrics:
            figures = {k: v for k, v in figures.items() if k != "examples"}
            self._metrics.write(json.dumps({"step": step, "epoch": epoch, "split": split,
                                            "elapsed_s": self.elapsed(), **figures, **extra}) + "\n")

    def advance(self, steps: int = 1):
        if self._bar is not None:
            self._bar.update(steps)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for handle in (self._log, self._metrics):
            if handle:
                handle.close()
        self._log = self._metrics = None


def describe(figures: dict) -> str:
    """'loss 0.4321 error 0.1234' (the error only where there is one)."""
    return f"loss {figures['loss']:.4f}" + (f" error {figures['error']:.4f}" if "error" in figures else "")
