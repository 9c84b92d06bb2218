"""Optimizers over the flat parameter buffer, and learning-rate schedules.

``optimizer.step(params, grads, lr)`` updates Phi (the graph's flat ``params``) in place from the
gradient of the minibatch loss (its flat ``grads``); the optimizer's own state (velocity; m, v) is
kept in arrays of the same layout, made on the first step.  The lecture's SGD() is
``SGD(lr).step(graph.params, graph.grads)``:  Phi <- Phi - eta grad.

``clip_norm`` = c > 0 first scales the gradient to a global L2 norm of at most c (Pascanu et al. 2013), as
PyTorch's clip_grad_norm_:  grad <- grad min(1, c / (||grad|| + 1e-6)).  Under data parallelism the
optimizer sees the reduced gradient, the same bytes on every rank, so every rank clips alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import check_integer, check_option


class Optimizer:
    """Common shape of SGD and Adam: hyper-parameters, state arrays named in ``state_names``."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float, weight_decay: float = 0.0, clip_norm: float = 0.0):
        owner = type(self).__name__
        check_option(owner, "lr", lr, _number(lr) and lr > 0, "must be > 0")
        check_option(owner, "weight_decay", weight_decay, _number(weight_decay) and weight_decay >= 0, "must be >= 0")
        check_option(owner, "clip_norm", clip_norm, _number(clip_norm) and clip_norm >= 0, "must be >= 0 (0 = off)")
        self.lr, self.weight_decay, self.clip_norm = lr, weight_decay, clip_norm
        self.steps_taken = 0
        self.state: dict[str, np.ndarray] = {}

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float | None = None):
        """One update of ``params`` in place; ``lr`` (default ``self.lr``) is this step's eta."""
        if not self.state:
            self.state = {name: np.zeros_like(params) for name in self.state_names}
        if self.clip_norm:
            # ||grad|| = sqrt(grad[n] grad[n]), summed in float64: every rank holds the same reduced gradient and
            # runs the same NumPy, so every rank computes the same factor
            norm = math.sqrt(float(np.square(grads, dtype=np.float64).sum()))
            grads = grads * grads.dtype.type(min(1.0, self.clip_norm / (norm + 1e-6)))
        g = grads + self.weight_decay * params if self.weight_decay else grads   # g = grad + wd Phi
        self.steps_taken += 1
        self.update(params, g, self.lr if lr is None else lr)

    def update(self, params: np.ndarray, g: np.ndarray, lr: float):
        raise NotImplementedError

    # Optimizer state for checkpoints: named flat arrays plus the step counter.
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: array.copy() for name, array in self.state.items()}
        state["steps_taken"] = np.array(self.steps_taken, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict, dtype=np.float32):
        self.state = {name: np.array(state[name], dtype=dtype) for name in self.state_names if name in state}
        self.steps_taken = int(state["steps_taken"])


class SGD(Optimizer):
    """SGD with optional momentum (heavy ball or Nesterov) and weight decay, as PyTorch defines them:

        g = grad + wd Phi
        v <- mu v + g                              (v starts at 0)
        d = g + mu v  (Nesterov)   or   d = v
        Phi <- Phi - eta d

    With mu = 0 and wd = 0 this is exactly the lecture's Phi <- Phi - eta grad.
    """

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_norm: float = 0.0):
        super().__init__(lr, weight_decay, clip_norm)
        check_option("SGD", "momentum", momentum, _number(momentum) and 0 <= momentum < 1, "must be in [0, 1)")
        check_option("SGD", "nesterov", nesterov, not nesterov or momentum > 0, "needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self.state_names = ("velocity",) if momentum else ()

    def update(self, params, g, lr):
        if self.momentum:
            v = self.state["velocity"]
            v *= self.momentum                     # v <- mu v + g
            v += g
            g = g + self.momentum * v if self.nesterov else v
        params -= lr * g                           # Phi <- Phi - eta d


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with L2 weight decay folded into the gradient:

        g = grad + wd Phi
        m <- b1 m + (1 - b1) g;     v <- b2 v + (1 - b2) g^2
        Phi <- Phi - eta m_hat / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
    """

    state_names = ("m", "v")

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 clip_norm: float = 0.0):
        super().__init__(lr, weight_decay, clip_norm)
        for name, beta in zip(("beta1", "beta2"), betas):
            check_option("Adam", name, beta, _number(beta) and 0 <= beta < 1, "must be in [0, 1)")
        check_option("Adam", "eps", eps, _number(eps) and eps > 0, "must be > 0")
        self.beta1, self.beta2 = betas
        self.eps = eps

    def update(self, params, g, lr):
        b1, b2, t = self.beta1, self.beta2, self.steps_taken
        m, v = self.state["m"], self.state["v"]
        m *= b1                                    # m <- b1 m + (1 - b1) g
        m += (1 - b1) * g
        v *= b2                                    # v <- b2 v + (1 - b2) g^2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        params -= lr * m_hat / (np.sqrt(v_hat) + self.eps)


# -- learning-rate schedules ------------------------------------------------------------------

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class Schedule:
    """eta at optimizer step ``step`` (counting from 0), for a base rate and a run of ``total_steps``:

    warm-up  (Goyal et al. 2017): eta = base * (step + 1) / warmup_steps   while step < warmup_steps
    constant: eta = base
    step:     eta = base * gamma ** floor((step - warmup) / step_size)
    cosine:   eta = min + (base - min) (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
    """

    kind: str = "constant"
    warmup_steps: int = 0
    step_size: int = 0
    gamma: float = 0.1
    min_lr: float = 0.0
    total_steps: int = 0      # the cosine's horizon; 0 = the run's length (Trainer.fit's steps)

    def __post_init__(self):
        check_option("Schedule", "kind", self.kind, self.kind in SCHEDULES, f"is not one of {list(SCHEDULES)}")
        for name in ("warmup_steps", "step_size", "total_steps"):
            check_integer("Schedule", name, getattr(self, name), 0)
        check_option("Schedule", "step_size", self.step_size, self.kind != "step" or self.step_size > 0,
                     "must be >= 1 for the 'step' schedule")
        check_option("Schedule", "gamma", self.gamma, _number(self.gamma) and 0 < self.gamma <= 1, "must be in (0, 1]")
        check_option("Schedule", "min_lr", self.min_lr, _number(self.min_lr) and self.min_lr >= 0, "must be >= 0")

    def check(self, lr: float):
        """Refuse a cosine that would climb from ``lr`` to a larger min_lr."""
        check_option("Schedule", "min_lr", self.min_lr, self.kind != "cosine" or self.min_lr <= lr,
                     f"exceeds lr = {lr}: a cosine schedule would climb; give min_lr <= lr")

    def __call__(self, step: int, base_lr: float, total_steps: int = 0) -> float:
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        t = step - self.warmup_steps
        if self.kind == "step":
            return base_lr * self.gamma ** (t // self.step_size)
        if self.kind == "cosine":
            progress = min(t / max((self.total_steps or total_steps) - self.warmup_steps, 1), 1.0)
            return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return base_lr


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
