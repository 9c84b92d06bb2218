"""Dropout whose mask is a pure function of (seed, step, example index, unit), and the two Inputs that
tell a graph what it needs for that: whether it is training, and which examples its rows are.

No generator lives in the graph or in a rank: the mask of example n at optimizer step t is hashed from
(seed, t, n) with splitmix64 (Steele et al. 2014, a counter-based generator), so W ranks, each holding a
few rows of the batch, drop exactly the units one process drops, and a resumed run drops what an
unbroken one does.  The step that feeds x and y (training/data_parallel.py) feeds these two as well.
"""

from __future__ import annotations

import numpy as np

from .graph import CompNode, Input, Node


class TrainingFlag(Input):
    """True while a step trains, False while evaluating (dropout off); the step feeds it, like x."""


class ExampleKeys(Input):
    """keys[b] = (t, n): the optimizer step t and the index n in the data of the example in row b, as
    uint64 (B, 2); the step feeds it, like x.  A function of them is the same on any number of ranks."""


GOLDEN, M1, M2 = (np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (products wrap modulo 2^64, as the algorithm wants)."""
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, keys: np.ndarray, units: int) -> np.ndarray:
    """u[b,m] in [0, 1): the m-th draw of the example keys[b] = (t, n) under ``seed``, 53 random bits."""
    t, n = keys[:, 0].astype(np.uint64), keys[:, 1].astype(np.uint64)
    # h[b] = mix(mix(mix(seed + G) + t[b]) + n[b]): one stream per (seed, step, example)
    h = mix(mix(mix(np.full(len(keys), seed, np.uint64) + GOLDEN) + t) + n)
    # u[b,m] = mix(h[b] + (m + 1) G) / 2^64
    z = mix(h[:, None] + np.arange(1, units + 1, dtype=np.uint64) * GOLDEN)
    return (z >> np.uint64(11)) * 2.0 ** -53


class Dropout(CompNode):
    """Training: y[b,m] = x[b,m] keep[b,m] / (1 - p), keep[b,m] = [u[b,m] >= p] (u from the example's keys);
    evaluating: y = x.  x of any shape (B, ...), m its flat position within the example.  Give each Dropout
    of a graph its own ``seed``: two with the same seed drop the same units."""

    def __init__(self, x: Node, training: TrainingFlag, keys: ExampleKeys, p: float, seed: int, name: str = ""):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout p = {p} must be in [0, 1)")
        super().__init__(x, training, keys, name=name)
        self.x, self.training, self.keys, self.p, self.seed = x, training, keys, p, seed

    def forward(self):
        x = self.x.value
        if self.training.value is None:
            raise self.shape_error(f"needs its TrainingFlag '{self.training.name}' fed: DataParallel.step and "
                                   f"evaluate do it; in a loop of your own set .value = True (or False) per batch")
        if not bool(self.training.value) or self.p == 0:
            self.scale = None
            self.value = x                                   # y = x while evaluating
            return
        keys = np.asarray(self.keys.value)
        if keys.shape != (len(x), 2):
            raise self.shape_error(f"needs keys (B, 2) = ({len(x)}, 2)")
        # scale[b,m] = keep[b,m] / (1 - p)
        keep = uniforms(self.seed, keys, int(np.prod(x.shape[1:]))).reshape(x.shape) >= self.p
        self.scale = keep.astype(x.dtype) / x.dtype.type(1 - self.p)
        # y[b,m] = x[b,m] scale[b,m]
        self.value = x * self.scale

    def backward(self):
        # x.grad[b,m] += y.grad[b,m] scale[b,m]    (scale = 1 while evaluating)
        self.x.addgrad(self.grad if self.scale is None else self.grad * self.scale)
