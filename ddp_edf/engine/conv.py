"""Ops for images: convolution, pooling and reshaping, each with its forward and backward side by side.

Images are channels-first, x[b,c,h,w] of shape (B, C, H, W), as in PyTorch.  Index letters: b the example,
c the input channel, o the output channel, (h, w) a pixel of the input, (p, q) a pixel of the output,
(i, j) an offset inside the k x k window.  With stride s and padding a, output pixel (p, q) sees input
pixels (s p + i - a, s q + j - a).  As in ops.py, every backward only *adds* to its inputs' gradients.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .graph import CompNode, Node


def windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """P[b,c,p,q,i,j] = x[b,c,s p + i,s q + j]: every k x k window, a strided view (no copy)."""
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]


def offsets(x: np.ndarray, k: int, stride: int, P: int, Q: int):
    """For each offset (i, j) of the window, the view x[b,c,s p + i,s q + j] of shape (B, C, P, Q)."""
    return [x[:, :, i:i + stride * (P - 1) + 1:stride, j:j + stride * (Q - 1) + 1:stride]
            for i in range(k) for j in range(k)]


def zeros_like_layout(shape, like: np.ndarray) -> np.ndarray:
    """Zeros (B, C, H, W) laid out in memory as ``like`` is (channels-last when it came from a GEMM), so that the
    strided adds into it and its add into like's gradient run along memory."""
    channels_last = like.strides[1] < like.strides[3]
    return np.zeros(shape[:1] + shape[2:] + shape[1:2], like.dtype).transpose(0, 3, 1, 2) if channels_last \
        else np.zeros(shape, like.dtype)


class Conv2d(CompNode):
    """y[b,o,p,q] = x_pad[b,c,s p + i,s q + j] K[o,c,i,j] + bias[o]: one GEMM over the k x k patches (im2col).
    x (B, C, H, W), K (O, C, k, k), bias (O,) -> y (B, O, (H + 2a - k) // s + 1, (W + 2a - k) // s + 1)
    (y is laid out channels-last in memory, the GEMM's order; its shape and indices are channels-first)."""

    def __init__(self, x: Node, K: Node, bias: Node, stride: int = 1, padding: int = 0, name: str = ""):
        if stride < 1 or padding < 0:
            raise ValueError(f"Conv2d needs stride >= 1 and padding >= 0, not {stride} and {padding}")
        super().__init__(x, K, bias, name=name)
        self.x, self.K, self.bias, self.stride, self.padding = x, K, bias, stride, padding

    def kernel(self) -> np.ndarray:
        """K[o,(i,j,c)]: the kernel as a matrix, its columns in the patches' order."""
        return self.K.value.transpose(0, 2, 3, 1).reshape(len(self.K.value), -1)

    def patches(self) -> np.ndarray:
        """cols[(b,p,q),(i,j,c)] = x_pad[b,c,s p + i,s q + j]: the im2col matrix (numpy's one copy, in C)."""
        a, (B, C, H, W), k = self.padding, self.x.value.shape, self.K.value.shape[2]
        x_pad = np.pad(self.x.value, ((0, 0), (0, 0), (a, a), (a, a))) if a else self.x.value
        self.P, self.Q = (H + 2 * a - k) // self.stride + 1, (W + 2 * a - k) // self.stride + 1
        return windows(x_pad, k, self.stride).transpose(0, 2, 3, 4, 5, 1).reshape(B * self.P * self.Q, k * k * C)

    def forward(self):
        x, K, a = self.x.value, self.K.value, self.padding
        if x.ndim != 4 or K.ndim != 4 or x.shape[1] != K.shape[1] or K.shape[2] != K.shape[3] \
                or self.bias.value.shape != K.shape[:1] or min(x.shape[2:]) + 2 * a < K.shape[2]:
            raise self.shape_error("needs x (B, C, H, W), K (O, C, k, k) with k <= H + 2 padding, bias (O,)")
        # y[b,o,p,q] = cols[(b,p,q),(i,j,c)] K[o,(i,j,c)] + bias[o]    (cols is rebuilt in backward, not kept:
        y = self.patches() @ self.kernel().T                                  # k^2 C floats per output pixel)
        y += self.bias.value
        self.value = y.reshape(len(x), self.P, self.Q, len(K)).transpose(0, 3, 1, 2)

    def backward(self):
        K, a = self.K.value, self.padding
        O, C, k, _ = K.shape
        g = self.grad.transpose(0, 2, 3, 1).reshape(-1, O)               # g[(b,p,q),o]
        if self.K.needs_grad:
            # K.grad[o,c,i,j] += g[(b,p,q),o] cols[(b,p,q),(i,j,c)]
            self.K.addgrad((g.T @ self.patches()).reshape(O, k, k, C).transpose(0, 3, 1, 2))
        if self.bias.needs_grad:
            # bias.grad[o] += y.grad[b,o,p,q]
            self.bias.addgrad(g.sum(axis=0))
        if self.x.needs_grad:
            B, _, H, W = self.x.value.shape
            # dP[b,p,q,i,j,c] = g[(b,p,q),o] K[o,(i,j,c)]
            dP = (g @ self.kernel()).reshape(B, self.P, self.Q, k * k, C)
            # x.grad[b,c,h,w] += dP[b,p,q,i,j,c] over every (p, q, i, j) with s p + i - a = h, s q + j - a = w
            dx_pad = zeros_like_layout((B, C, H + 2 * a, W + 2 * a), self.x.value)
            for n, view in enumerate(offsets(dx_pad, k, self.stride, self.P, self.Q)):
                view += dP[:, :, :, n].transpose(0, 3, 1, 2)
            self.x.addgrad(dx_pad[:, :, a:a + H, a:a + W])


class Pool2d(CompNode):
    """What the pools share: a k x k window moved by ``stride`` (default k) over x (B, C, H, W) -> (B, C, P, Q)."""

    def __init__(self, x: Node, kernel: int = 2, stride: int | None = None, name: str = ""):
        if kernel < 1 or (stride is not None and stride < 1):
            raise ValueError(f"{type(self).__name__} needs kernel >= 1 and stride >= 1, not {kernel} and {stride}")
        super().__init__(x, name=name)
        self.x, self.kernel, self.stride = x, kernel, stride or kernel

    def views(self, array: np.ndarray) -> list:
        """array[b,c,s p + i,s q + j] for each window offset (i, j), each of shape (B, C, P, Q)."""
        if self.x.value.ndim != 4 or min(self.x.value.shape[2:]) < self.kernel:
            raise self.shape_error(f"needs x (B, C, H, W) with H, W >= {self.kernel}")
        self.P, self.Q = ((n - self.kernel) // self.stride + 1 for n in self.x.value.shape[2:])
        return offsets(array, self.kernel, self.stride, self.P, self.Q)


class MaxPool2d(Pool2d):
    """y[b,c,p,q] = max_(i,j) x[b,c,s p + i,s q + j] over each k x k window.  (B, C, H, W) -> (B, C, P, Q)
    The gradient goes to the first maximum of each window (as PyTorch's); rows and columns past the last
    whole window get none.  A NaN in a window is its maximum."""

    def forward(self):
        # y[b,c,p,q] = max over (i, j) of x[b,c,s p + i,s q + j]: k^2 elementwise maxima of strided views
        self.value = functools.reduce(np.maximum, self.views(self.x.value))

    def backward(self):
        # x.grad[b,c,s p + i,s q + j] += y.grad[b,c,p,q] [(i, j) is the first offset where x = y]
        dx = zeros_like_layout(self.x.value.shape, self.x.value)
        taken = np.zeros(self.value.shape, bool)            # windows whose maximum got its gradient already
        for view, dview in zip(self.views(self.x.value), self.views(dx)):
            first = np.greater(view == self.value, taken)   # x = y here, and not at an earlier offset
            dview += self.grad * first
            taken |= first
        self.x.addgrad(dx)


class AvgPool2d(Pool2d):
    """y[b,c,p,q] = x[b,c,s p + i,s q + j] / k^2, summed over each k x k window.  (B, C, H, W) -> (B, C, P, Q)"""

    def forward(self):
        # y[b,c,p,q] = x[b,c,s p + i,s q + j] / k^2
        self.value = sum(self.views(self.x.value)) / self.x.value.dtype.type(self.kernel ** 2)

    def backward(self):
        # x.grad[b,c,s p + i,s q + j] += y.grad[b,c,p,q] / k^2
        dx = zeros_like_layout(self.x.value.shape, self.x.value)
        share = self.grad / self.grad.dtype.type(self.kernel ** 2)
        for dview in self.views(dx):
            dview += share
        self.x.addgrad(dx)


class Reshape(CompNode):
    """y[b, ...] = x[b, ...] with each example's values laid out in ``shape`` (-1: the rest), row-major.
    Reshape(x, (-1,)) flattens (B, C, H, W) to (B, C H W); Reshape(x, (1, 28, 28)) makes rows images."""

    def __init__(self, x: Node, shape, name: str = ""):
        super().__init__(x, name=name)
        self.x, self.shape = x, tuple(shape)

    def forward(self):
        x, per_example = self.x.value, int(np.prod(self.x.value.shape[1:]))
        known = int(np.prod([n for n in self.shape if n != -1]))       # -1 resolved here: B may be 0
        shape = tuple(per_example // max(known, 1) if n == -1 else n for n in self.shape)
        if int(np.prod(shape)) != per_example:
            raise self.shape_error(f"cannot lay {per_example} values per example out as {self.shape}")
        self.value = x.reshape(len(x), *shape)                  # y[b, m] = x[b, n], the same flat position

    def backward(self):
        # x.grad[b, n] += y.grad[b, m] at the same flat position
        self.x.addgrad(self.grad.reshape(self.x.value.shape))


def Flatten(x: Node, name: str = "") -> Reshape:
    """y[b, (c,h,w)] = x[b,c,h,w]: (B, C, H, W) -> (B, C H W), before an Affine."""
    return Reshape(x, (-1,), name=name)
