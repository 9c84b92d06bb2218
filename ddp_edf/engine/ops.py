"""The computation nodes of the lecture, each with its forward and backward side by side.

Index letters, as in the lecture: b runs over the minibatch, i over input features, j over output
features, k over classes (the lecture's y-hat).  A repeated index on the right of an equation that
does not appear on the left is summed over.  Every backward only *adds* to its inputs' gradients.
Shapes: x (B, I), W (I, J), b (J,), activations (B, J), scores s (B, K), labels y (B,) of ints.
"""

from __future__ import annotations

import numpy as np

from .graph import CompNode, Node


def _check_labels(op: CompNode, scores: np.ndarray, labels: np.ndarray):
    if scores.ndim != 2:
        raise op.shape_error(f"scores must be (B, K), got {scores.shape}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise op.shape_error(f"labels must be (B,) = ({scores.shape[0]},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise op.shape_error(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise op.shape_error(f"labels must lie in [0, {scores.shape[1]}), got [{labels.min()}, {labels.max()}]")


class Affine(CompNode):
    """y = x W + b on every row of the minibatch.  x (B, I), W (I, J), b (J,) -> y (B, J)
    (x may have more leading axes, e.g. a sequence (B, T, I): each row x[b,t,:] is mapped the same way;
    b=None: no bias, y = x W)."""

    def __init__(self, x: Node, W: Node, b: Node | None = None, name: str = ""):
        super().__init__(*(x, W) if b is None else (x, W, b), name=name)
        self.x, self.W, self.b = x, W, b

    def forward(self):
        x, W = self.x.value, self.W.value
        if x.ndim < 2 or W.ndim != 2 or x.shape[-1] != W.shape[0] or \
                (self.b is not None and self.b.value.shape != (W.shape[1],)):
            raise self.shape_error("needs x (B, I), W (I, J) and b (J,)")
        # y[b,j] = x[b,i] W[i,j] + b[j]       (rows (b,) or (b,t): one 2-D GEMM)
        self.value = (x.reshape(-1, W.shape[0]) @ W).reshape(*x.shape[:-1], W.shape[1])
        if self.b is not None:
            self.value += self.b.value

    def backward(self):
        I, J = self.W.value.shape
        g = self.grad.reshape(-1, J)            # rows (b,) or (b,t): a view, no copy
        if self.x.needs_grad:   # never for the image batch: that GEMM would be a third of the step
            # x.grad[b,i] += y.grad[b,j] W[i,j]
            self.x.addgrad((g @ self.W.value.T).reshape(self.x.value.shape))
        if self.W.needs_grad:
            # W.grad[i,j] += x[b,i] y.grad[b,j]     (the sum over b is this one GEMM, not a (B, I, J) tensor)
            self.W.addgrad(self.x.value.reshape(-1, I).T @ g)
        if self.b is not None and self.b.needs_grad:
            # b.grad[j] += y.grad[b,j]
            self.b.addgrad(g.sum(axis=0))


class Relu(CompNode):
    """y = max(x, 0) elementwise (a NaN in x stays NaN, so it surfaces as a non-finite loss)."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        # y[b,j] = max(x[b,j], 0)
        self.value = np.maximum(self.x.value, 0)

    def backward(self):
        # x.grad[b,j] += y.grad[b,j] [x[b,j] > 0]
        self.x.addgrad(self.grad * (self.x.value > 0))


class Sigmoid(CompNode):
    """y = 1 / (1 + exp(-x)) elementwise, computed without overflow for any x."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        x = self.x.value
        # sigma(x) = 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0: exp never sees a large argument
        e = np.exp(-np.abs(x))
        self.value = np.where(x >= 0, 1, e) / (1 + e)

    def backward(self):
        # x.grad[b,j] += y.grad[b,j] y[b,j] (1 - y[b,j])
        y = self.value
        self.x.addgrad(self.grad * y * (1 - y))


class Tanh(CompNode):
    """y = tanh(x) elementwise."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        # y[b,j] = tanh(x[b,j])
        self.value = np.tanh(self.x.value)

    def backward(self):
        # x.grad[b,j] += y.grad[b,j] (1 - y[b,j]^2)
        y = self.value
        self.x.addgrad(self.grad * (1 - y * y))


class Add(CompNode):
    """y = u + v elementwise (a residual connection; Add(h, h) is the lecture's "node used twice")."""

    def __init__(self, u: Node, v: Node, name: str = ""):
        super().__init__(u, v, name=name)
        self.u, self.v = u, v

    def forward(self):
        if self.u.value.shape != self.v.value.shape:
            raise self.shape_error("needs two inputs of the same shape")
        # y[b,j] = u[b,j] + v[b,j]
        self.value = self.u.value + self.v.value

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
        # e[b,k] = exp(s[b,k] - m[b]), m[b] = max_k s[b,k] (changes nothing, keeps exp() <= 1); Q = e / Z
        e = np.exp(s - s.max(axis=1, keepdims=True))
        self.value = e / e.sum(axis=1, keepdims=True)

    def backward(self):
        # s.grad[b,k] += Q[b,k] (Q.grad[b,k] - Q.grad[b,k'] Q[b,k'])
        Q, g = self.value, self.grad
        self.s.addgrad(Q * (g - (g * Q).sum(axis=1, keepdims=True)))


class LogLoss(CompNode):
    """The lecture's log loss of probabilities: ell[b] = -log Q[b, y[b]].  Q (B, K), y (B,) -> ell (B,)
    Kept for teaching: -log of a probability that underflowed to 0 is inf.  Train with
    SoftmaxCrossEntropy, which never forms Q's logarithm."""

    def __init__(self, Q: Node, y: Node, name: str = ""):
        super().__init__(Q, y, name=name)
        self.Q, self.y = Q, y

    def forward(self):
        Q, y = self.Q.value, self.y.value
        _check_labels(self, Q, y)
        # ell[b] = -log Q[b, y[b]]
        self.value = -np.log(Q[np.arange(len(y)), y])

    def backward(self):
        # Q.grad[b, y[b]] += -ell.grad[b] / Q[b, y[b]]      (zero for every other k)
        Q, y = self.Q.value, self.y.value
        rows = np.arange(len(y))
        delta = np.zeros_like(Q)
        delta[rows, y] = -self.grad / Q[rows, y]
        self.Q.addgrad(delta)


class SoftmaxCrossEntropy(CompNode):
    """Softmax and LogLoss fused: ell[b] = log Z[b] - s[b, y[b]].  s (B, K), y (B,) -> ell (B,)
    log Z is a log-sum-exp with the row max taken out: loss and gradient stay finite for any finite
    scores (even +-1e4 in float32).  Each example's loss is computed from its own row only."""

    def __init__(self, s: Node, y: Node, name: str = ""):
        super().__init__(s, y, name=name)
        self.s, self.y = s, y

    def forward(self):
        s, y = self.s.value, self.y.value
        _check_labels(self, s, y)
        rows = np.arange(len(y))
        # z[b,k] = s[b,k] - m[b],  m[b] = max_k s[b,k]
        z = s - s.max(axis=1, keepdims=True)
        e = np.exp(z)
        Z = e.sum(axis=1)
        # ell[b] = log Z[b] - s[b,y[b]] = log sum_k exp(z[b,k]) - z[b,y[b]]
        self.value = np.log(Z) - z[rows, y]
        # Q[b,k] = exp(z[b,k]) / Z[b], kept for backward
        self.Q = e / Z[:, None]

    def backward(self):
        # s.grad[b,k] += ell.grad[b] (Q[b,k] - [k = y[b]])
        delta = self.Q * self.grad[:, None]
        delta[np.arange(len(delta)), self.y.value] -= self.grad
        self.s.addgrad(delta)


class ErrorRate(CompNode):
    """err[b] = [argmax_k s[b,k] != y[b]] as 0.0 or 1.0.  A metric: its mean is the error rate.
    It has no gradient (argmax is piecewise constant), so it never takes part in backward."""

    def __init__(self, s: Node, y: Node, name: str = ""):
        super().__init__(s, y, name=name)
        self.s, self.y = s, y
        self.needs_grad = False

    def forward(self):
        s, y = self.s.value, self.y.value
        _check_labels(self, s, y)
        # err[b] = [argmax_k s[b,k] != y[b]]
        self.value = (s.argmax(axis=1) != y).astype(s.dtype)
