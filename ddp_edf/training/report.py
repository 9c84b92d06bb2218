"""Rank 0's voice: console lines, OUT/train.log, OUT/metrics.jsonl and a progress bar on a TTY.

Library code never prints; the trainer reports through one Reporter, which is silent on other
ranks.  Without an OUT folder nothing is written; ``echo=False`` keeps the console quiet too.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tqdm import tqdm

from .errors import disk_error


class Reporter:
    def __init__(self, out_dir=None, enabled: bool = True, echo: bool = True):
        self.enabled, self.echo = enabled, echo
        self.start = time.perf_counter()
        self._bar = self._log = self._metrics = None
        if enabled and out_dir:
            self._log = self._open(os.path.join(out_dir, "train.log"))
            self._metrics = self._open(os.path.join(out_dir, "metrics.jsonl"))

    @staticmethod
    def _open(path):
        try:
            return open(path, "a", buffering=1)
        except OSError as error:
            raise disk_error(error, path) from None

    @staticmethod
    def _write(handle, line: str):
        try:
            handle.write(line + "\n")
        except OSError as error:     # a full disk: say so; what was written before stays
            raise disk_error(error, handle.name) from None

    def start_progress(self, total_steps: int, done: int = 0):
        """A tqdm progress bar over the run's steps, when stderr is a terminal."""
        if not (self.enabled and self.echo and sys.stderr.isatty()):
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
            self._write(self._log, line)

    def record(self, step: int, epoch: int, split: str, figures: dict, **extra):
        """One line of metrics.jsonl: where in the run, the split's figures (loss, error), extras."""
        if self._metrics:
            figures = {k: v for k, v in figures.items() if k != "examples"}
            self._write(self._metrics, json.dumps({"step": step, "epoch": epoch, "split": split,
                                                   "elapsed_s": self.elapsed(), **figures, **extra}))

    def advance(self, steps: int = 1):
        if self._bar is not None:
            self._bar.update(steps)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for handle in (self._log, self._metrics):
            if handle:
                try:
                    handle.close()
                except OSError:   # what a full disk left in the buffer: the write already raised the error
                    pass
        self._log = self._metrics = None


def describe(figures: dict) -> str:
    """'loss 0.4321 error 0.1234' (the error only where there is one)."""
    return f"loss {figures['loss']:.4f}" + (f" error {figures['error']:.4f}" if "error" in figures else "")
