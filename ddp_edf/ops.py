"""The computation nodes of the lecture, each with its forward and backward side by side.

Index letters, as in the lecture: b runs over the minibatch, i over input features, j over output
features, k over classes (the lecture's y-hat).  A repeated index on the right of an equation that
does not appear on the left is summed over.  Every backward only *adds* to its inputs' gradients.

Shapes: x (B, I), W (I, J), b (J,), activations (B, J), scores s (B, K), labels y (B,) of ints.
Values live in buffers owned by the node and reused while the batch size stays the same, so a
training step allocates no activation or parameter-sized arrays once it is warm.  A value is
overwritten by the next forward(): copy it if you want to keep it.
"""

from __future__ import annotations

import numpy as np

from .graph import CompNode, Node


def _out_dtype(a, b):
    return a.dtype if a.dtype == b.dtype else np.promote_types(a.dtype, b.dtype)


def _check_labels(op: CompNode, scores: np.ndarray, labels: np.ndarray):
    if scores.ndim != 2:
        raise op.shape_error(f"scores must be (B, K), got {scores.shape}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise op.shape_error(f"labels must be (B,) = ({scores.shape[0]},), got {labels.shape}")
    if labels.dtype.kind not in "iu":  # signed or unsigned integers
        raise op.shape_error(f"labels must be integers, got dtype {labels.dtype}")
    # 0 <= y[b] < K in one reduction: read as unsigned, a negative label is larger than any class
    as_unsigned = labels.view(labels.dtype.str.replace("i", "u"))  # '<i8' -> '<u8': same bytes, same order
    if labels.size and as_unsigned.max() >= scores.shape[1]:
        raise op.shape_error(
            f"labels must lie in [0, {scores.shape[1]}), got [{labels.min()}, {labels.max()}]")


class Affine(CompNode):
    """y = x W + b on every row of the minibatch.  x (B, I), W (I, J), b (J,) -> y (B, J)"""

    def __init__(self, x: Node, W: Node, b: Node, name: str = ""):
        super().__init__(x, W, b, name=name)
        self.x, self.W, self.b = x, W, b

    def forward(self):
        x, W, b = self.x.value, self.W.value, self.b.value
        if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0] or b.shape != (W.shape[1],):
            raise self.shape_error("needs x (B, I), W (I, J) and b (J,)")
        self.value = self.buffer("value", (x.shape[0], W.shape[1]), _out_dtype(x, W))
        # y[b,j] = x[b,i] W[i,j] + b[j]
        np.matmul(x, W, out=self.value)
        self.value += b

    def backward(self):
        g = self.grad
        if self.x.needs_grad:
            # x.grad[b,i] += y.grad[b,j] W[i,j]
            self.x.addgrad_matmul(g, self.W.value.T)
        if self.W.needs_grad:
            # W.grad[i,j] += x[b,i] y.grad[b,j]   (the sum over b is this one GEMM, not a (B, I, J) tensor)
            self.W.addgrad_matmul(self.x.value.T, g)
        if self.b.needs_grad:
            # b.grad[j] += 1[b] y.grad[b,j]   (the sum over b as one GEMV with a vector of ones:
            # a third of the time of g.sum(axis=0) at 128 x 256)
            self.b.addgrad_matmul(self.ones(g.shape[0], g.dtype), g)


class Relu(CompNode):
    """y = max(x, 0) elementwise, computed as x [x > 0]: the same for every finite x, and a NaN or
    -inf in x (an overflowed pre-activation) gives NaN, so it surfaces as a non-finite loss."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        x = self.x.value
        # mask[b,j] = [x[b,j] > 0], kept for backward;  y[b,j] = max(x[b,j], 0) = x[b,j] mask[b,j]
        # (a float mask and a multiply cost less than np.maximum, and backward reuses the mask)
        self.mask = np.greater(x, 0, out=self.buffer("mask", x.shape, x.dtype))
        self.value = np.multiply(x, self.mask, out=self.buffer("value", x.shape, x.dtype))

    def backward(self):
        # x.grad[b,j] += y.grad[b,j] [x[b,j] > 0]
        self.x.addgrad_product(self.grad, self.mask)  # one multiply by the mask, in place on first use


class Sigmoid(CompNode):
    """y = 1 / (1 + exp(-x)) elementwise, computed without overflow for any x."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        x = self.x.value
        # sigma(x) = 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0: exp never sees a large argument.
        e = np.exp(-np.abs(x))
        self.value = self.buffer("value", x.shape, x.dtype)
        np.divide(np.where(x >= 0, 1.0, e), 1.0 + e, out=self.value)

    def backward(self):
        # x.grad[b,j] += y.grad[b,j] y[b,j] (1 - y[b,j])
        y = self.value
        self.x.addgrad(self.grad * y * (1.0 - y))


class Tanh(CompNode):
    """y = tanh(x) elementwise."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        x = self.x.value
        self.value = self.buffer("value", x.shape, x.dtype)
        # y[b,j] = tanh(x[b,j])
        np.tanh(x, out=self.value)

    def backward(self):
        # x.grad[b,j] += y.grad[b,j] (1 - y[b,j]^2)
        y = self.value
        self.x.addgrad(self.grad * (1.0 - y * y))


class Add(CompNode):
    """y = u + v elementwise (a residual connection; Add(h, h) is the lecture's "node used twice")."""

    def __init__(self, u: Node, v: Node, name: str = ""):
        super().__init__(u, v, name=name)
        self.u, self.v = u, v

    def forward(self):
        u, v = self.u.value, self.v.value
        if u.shape != v.shape:
            raise self.shape_error("needs two inputs of the same shape")
        self.value = self.buffer("value", u.shape, _out_dtype(u, v))
        # y[b,j] = u[b,j] + v[b,j]
        np.add(u, v, out=self.value)

    def backward(self):
        # u.grad[b,j] += y.grad[b,j];  v.grad[b,j] += y.grad[b,j]
        self.u.addgrad(self.grad)
        self.v.addgrad(self.grad)


class Softmax(CompNode):
    """Q[b,k] = exp(s[b,k]) / Z[b],  Z[b] = exp(s[b,k']) summed over k'.  s (B, K) -> Q (B, K)"""

    def __init__(self, s: Node, name: str = ""):
        super().__init__(s, name=name)
        self.s = s

    def forward(self):
        s = self.s.value
        if s.ndim != 2:
            raise self.shape_error("needs scores of shape (B, K)")
        # Subtracting the row max changes nothing mathematically and keeps exp() <= 1.
        e = np.exp(s - s.max(axis=1, keepdims=True))
        self.value = self.buffer("value", s.shape, s.dtype)
        np.divide(e, e.sum(axis=1, keepdims=True), out=self.value)

    def backward(self):
        # s.grad[b,k] += Q[b,k] (Q.grad[b,k] - Q.grad[b,k'] Q[b,k'])
        Q, g = self.value, self.grad
        self.s.addgrad(Q * (g - (g * Q).sum(axis=1, keepdims=True)))


class LogLoss(CompNode):
    """The lecture's log loss of probabilities: ell[b] = -log Q[b, y[b]].  Q (B, K), y (B,) -> ell (B,)

    Kept for teaching: -log of a probability that underflowed to 0 is inf.  Train with
    SoftmaxCrossEntropy, which never forms Q's logarithm.
    """

    def __init__(self, Q: Node, y: Node, name: str = ""):
        super().__init__(Q, y, name=name)
        self.Q, self.y = Q, y

    def forward(self):
        Q, y = self.Q.value, self.y.value
        _check_labels(self, Q, y)
        self.rows = np.arange(Q.shape[0])
        # ell[b] = -log Q[b, y[b]]
        self.value = -np.log(Q[self.rows, y])

    def backward(self):
        # Q.grad[b, y[b]] += -ell.grad[b] / Q[b, y[b]]      (zero for every other k)
        Q, y = self.Q.value, self.y.value
        delta = np.zeros_like(Q)
        delta[self.rows, y] = -self.grad / Q[self.rows, y]
        self.Q.addgrad(delta)


class SoftmaxCrossEntropy(CompNode):
    """Softmax and LogLoss fused: ell[b] = log Z[b] - s[b, y[b]].  s (B, K), y (B,) -> ell (B,)

    log Z is a log-sum-exp with the row max taken out, so loss and gradient stay finite for any
    finite scores (even +-1e4 in float32).  Each example's loss depends on its own row only, bit
    for bit, so evaluation gives the same numbers for any batch size and number of ranks.
    """

    def __init__(self, s: Node, y: Node, name: str = ""):
        super().__init__(s, y, name=name)
        self.s, self.y = s, y

    def forward(self):
        s, y = self.s.value, self.y.value
        _check_labels(self, s, y)
        rows = self.arange(s.shape[0])
        # Worked on transposed, z^T (K, B): with K = 10 classes a reduction over k along contiguous
        # memory is ~3x faster than along rows of 10, and each example's column is still reduced
        # on its own (k = 0, 1, ..., K-1 in order), so its loss does not depend on the rest of the batch.
        z_t = self.buffer("z_t", s.shape[::-1], s.dtype)
        np.copyto(z_t, s.T)
        # z[b,k] = s[b,k] - m[b],  m[b] = max_k s[b,k]
        z_t -= np.maximum.reduce(z_t, axis=0, out=self.buffer("max", rows.shape, s.dtype))
        # ell[b] = log Z[b] - s[b,y[b]] = log sum_k exp(z[b,k]) - z[b,y[b]]
        exp_t = np.exp(z_t, out=self.buffer("exp_t", z_t.shape, s.dtype))
        sum_exp = self.buffer("sum_exp", rows.shape, s.dtype)
        if len(rows) > 1:
            np.add.reduce(exp_t, axis=0, out=sum_exp)      # row by row: k = 0, 1, ... in order
        else:  # one column is summed pairwise by reduce; accumulate keeps the order above
            sum_exp[0] = np.add.accumulate(exp_t[:, 0])[-1]
        self.value = np.log(sum_exp) - z_t[y, rows]
        # Q[b,k] = exp(z[b,k]) / sum_k' exp(z[b,k']), kept for backward (B, K)
        self.Q = self.buffer("Q", s.shape, s.dtype)
        np.divide(exp_t, sum_exp, out=self.Q.T)
        self.rows = rows

    def backward(self):
        # s.grad[b,k] += ell.grad[b] (Q[b,k] - [k = y[b]])
        delta = self.buffer("ds", self.Q.shape, self.Q.dtype)
        np.copyto(delta, self.Q)
        delta[self.rows, self.y.value] -= 1.0
        self.s.addgrad_product(delta, self.grad[:, None])


class ErrorRate(CompNode):
    """err[b] = [argmax_k s[b,k] != y[b]] as 0.0 or 1.0.  A metric: its mean is the error rate.

    It has no gradient (argmax is piecewise constant), so it never takes part in backward.
    """

    def __init__(self, s: Node, y: Node, name: str = ""):
        super().__init__(s, y, name=name)
        self.s, self.y = s, y
        self.needs_grad = False

    def forward(self):
        s, y = self.s.value, self.y.value
        _check_labels(self, s, y)
        # err[b] = [argmax_k s[b,k] != y[b]]
        self.value = (s.argmax(axis=1) != y).astype(s.dtype)

    def backward(self):
        raise TypeError(f"{self.describe_op()} is a metric and has no gradient; call backward on a loss")
