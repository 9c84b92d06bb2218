"""Rank 0's voice: console lines, OUT/train.log, OUT/metrics.jsonl and a progress bar on a TTY.

Library code never prints; the trainer reports through one Reporter, which is silent on other ranks.
"""

from __future__ import annotations

import json
import os
import sys
import time


class Reporter:
    def __init__(self, out_dir, enabled: bool):
        self.enabled = enabled
        self.out_dir = out_dir
        self.start = time.perf_counter()
        self._bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self._log = open(os.path.join(out_dir, "train.log"), "a", buffering=1)
        self._metrics = open(os.path.join(out_dir, "metrics.jsonl"), "a", buffering=1)

    def start_progress(self, total_steps: int, on_tty: bool | None = None):
        """A tqdm progress bar over the run's steps, when stderr is a terminal."""
        if not self.enabled or not (sys.stderr.isatty() if on_tty is None else on_tty):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, leave=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str):
        if not self.enabled:
            return
        line = f"[{self.elapsed():8.1f}s] {message}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)
        self._log.write(line + "\n")

    def metrics(self, record: dict):
        if self.enabled:
            self._metrics.write(json.dumps(record, sort_keys=False) + "\n")

    def advance(self, steps: int = 1):
        if self._bar is not None:
            self._bar.update(steps)

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._log.close()
        self._metrics.close()
