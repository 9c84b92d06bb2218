"""Optimizers over the flat parameter buffer, and learning-rate schedules.

``optimizer.step(params, grads, lr)`` updates Phi (the graph's flat ``params``) in place from the
gradient of the minibatch loss (its flat ``grads``); the optimizer's own state (velocity; m, v) is
kept in arrays of the same layout, made on the first step.  The lecture's SGD() is
``SGD(lr).step(graph.params, graph.grads)``:  Phi <- Phi - eta grad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class Optimizer:
    """Common shape of SGD and Adam: hyper-parameters, state arrays named in ``state_names``."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"{type(self).__name__} needs lr > 0 and weight_decay >= 0 "
                             f"(got lr = {lr}, weight_decay = {weight_decay})")
        self.lr, self.weight_decay = lr, weight_decay
        self.steps_taken = 0
        self.state: dict[str, np.ndarray] = {}

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float | None = None):
        """One update of ``params`` in place; ``lr`` (default ``self.lr``) is this step's eta."""
        if not self.state:
            self.state = {name: np.zeros_like(params) for name in self.state_names}
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
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0 <= momentum < 1 or (nesterov and momentum == 0):
            raise ValueError(f"SGD needs 0 <= momentum < 1, and momentum > 0 for Nesterov "
                             f"(got momentum = {momentum}, nesterov = {nesterov})")
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

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1 and eps > 0):
            raise ValueError(f"Adam needs betas in [0, 1) and eps > 0 (got betas = {betas}, eps = {eps})")
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
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.kind}'; choose one of {list(SCHEDULES)}")
        if self.kind == "step" and self.step_size <= 0:
            raise ValueError("the 'step' schedule needs step_size > 0")
        if self.warmup_steps < 0 or not 0 < self.gamma <= 1 or self.min_lr < 0 or self.total_steps < 0:
            raise ValueError("a schedule needs warmup_steps >= 0, 0 < gamma <= 1, min_lr >= 0 and total_steps >= 0")

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
