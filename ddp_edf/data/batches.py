"""Turn example indices into a float32 batch, one batch at a time, in reused buffers.

Images stay uint8 (memory-mapped) until here; x = pixels / 255 in float32, never float64.
"""

from __future__ import annotations

import numpy as np

SCALE = np.float32(1.0 / 255.0)


class BatchLoader:
    def __init__(self, num_features: int):
        self.num_features = num_features
        self._pixels = np.empty((0, num_features), np.uint8)
        self._x = np.empty((0, num_features), np.float32)

    def _buffers(self, n: int):
        if n > len(self._x):
            self._pixels = np.empty((n, self.num_features), np.uint8)
            self._x = np.empty((n, self.num_features), np.float32)
        return self._pixels[:n], self._x[:n]

    def load(self, split, indices: np.ndarray):
        """(x (n, I) float32 in [0, 1], y (n,) int64) for the examples ``indices`` of ``split``."""
        pixels, x = self._buffers(len(indices))
        np.take(split.images, indices, axis=0, out=pixels)
        np.copyto(x, pixels)    # uint8 -> float32, then scale in place: faster than one mixed-type multiply
        x *= SCALE
        return x, split.labels[indices]

    def load_range(self, split, start: int, stop: int):
        """The same for the contiguous examples [start, stop): a slice, no gather."""
        _, x = self._buffers(stop - start)
        np.multiply(split.images[start:stop], SCALE, out=x)
        return x, split.labels[start:stop]
