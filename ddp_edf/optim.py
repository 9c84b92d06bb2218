"""Optimizers over the flat parameter buffer, and learning-rate schedules.

An optimizer holds the graph's two flat arrays, ``params`` (Phi) and ``grads`` (the gradient of
the minibatch loss), plus its own state in arrays of the same layout, so a step is a handful of
vectorised in-place operations over the whole model.  Every step works in place: no array of the
model's size is allocated after construction.

The lecture's SGD is ``Phi <- Phi - eta grad``:  ``SGD(params, grads)`` with momentum 0.
"""

from __future__ import annotations

import math

import numpy as np

from .axpby import Axpby, find_blas_axpby


class Optimizer:
    """Common shape of SGD and Adam: ``step(lr)`` updates ``params`` in place from ``grads``."""

    state_names: tuple[str, ...] = ()

    def __init__(self, params: np.ndarray, grads: np.ndarray, weight_decay: float = 0.0):
        if params.shape != grads.shape or params.dtype != grads.dtype:
            raise ValueError("params and grads must be flat arrays of the same shape and dtype")
        self.params, self.grads = params, grads
        self.out = params           # where the updated Phi goes: params itself (in place) by default
        self.weight_decay = weight_decay
        self.steps_taken = 0
        self._scratch = np.empty_like(params)
        self._kernel = find_blas_axpby(params.dtype)

    def _gradient(self) -> np.ndarray:
        """g = grad + weight_decay * Phi  (L2 regularisation): in the scratch buffer, or ``grads``
        itself without decay (never written)."""
        if not self.weight_decay:
            return self.grads
        g = self._scratch
        np.multiply(self.params, self.weight_decay, out=g)
        g += self.grads
        return g

    def step(self, lr: float):
        raise NotImplementedError

    def retarget(self, params: np.ndarray, out: np.ndarray):
        """Read Phi from ``params`` and write the updated Phi to ``out`` from now on (a ring of
        parameter copies moves both every step; the state stays)."""
        if params.shape != self.grads.shape or out.shape != self.grads.shape:
            raise ValueError("params and out must have the shape of grads")
        self.params, self.out = params, out
        self._bind_update()

    def _bind_update(self):
        """Bind the last line of every update, Phi <- Phi + a d, to ``out``: one axpby pass (the
        subclass sets ``_direction``, the vector d, and ``_update_scratch`` for NumPy's fallback)."""
        self._in_place = np.may_share_memory(self.params, self.out)
        self._parameter_update = Axpby(self._direction, self.out, self._kernel, self._update_scratch)

    def _update_parameters(self, a: float):
        """Phi <- Phi + a d.  With a ring of parameter copies Phi first moves to the next copy and is
        updated there by the same axpby: the ring and in place give the same bits on every kernel."""
        if not self._in_place:
            np.copyto(self.out, self.params)
        self._parameter_update(a)

    # Optimizer state for checkpoints: named flat arrays plus the step counter.
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: getattr(self, name).copy() for name in self.state_names}
        state["steps_taken"] = np.array(self.steps_taken, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict):
        for name in self.state_names:
            array = np.asarray(state[name])
            target = getattr(self, name)
            if array.shape != target.shape:
                raise ValueError(f"optimizer state '{name}' has shape {array.shape}, expected {target.shape}")
            target[...] = array
        self.steps_taken = int(state["steps_taken"])


class SGD(Optimizer):
    """SGD with optional momentum (heavy ball or Nesterov) and weight decay, as PyTorch defines them:

        g = grad + wd Phi
        v <- mu v + g                              (v starts at 0)
        d = g + mu v  (Nesterov)   or   d = v
        Phi <- Phi - eta d

    With mu = 0 and wd = 0 this is exactly the lecture's Phi <- Phi - eta grad.  Each line that is
    a multiply-add over the model runs as one BLAS ?axpby pass where NumPy would need two (axpby.py).
    """

    def __init__(self, params, grads, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, grads, weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = np.zeros_like(params)
        self._nesterov_term = np.empty_like(params) if nesterov else None
        self.state_names = ("velocity",) if momentum else ()
        g = self._scratch if weight_decay else self.grads     # where g is when step() needs it
        self._direction = self._nesterov_term if nesterov else self.velocity if momentum else g
        self._update_scratch = self._scratch
        self._velocity_update = Axpby(g, self.velocity, self._kernel, self._scratch)
        self._nesterov_update = Axpby(self.velocity, self._nesterov_term, self._kernel, self._scratch) \
            if nesterov else None
        self._bind_update()

    def step(self, lr: float):
        g = self._gradient()   # g = grad + wd Phi
        if self.momentum:
            self._velocity_update(1.0, self.momentum)          # v <- mu v + g
            if self.nesterov:
                np.copyto(self._nesterov_term, g)
                self._nesterov_update(self.momentum)           # d = g + mu v
        self._update_parameters(-lr)                           # Phi <- Phi - eta d
        self.steps_taken += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with L2 weight decay folded into the gradient:

        g = grad + wd Phi
        m <- b1 m + (1 - b1) g;     v <- b2 v + (1 - b2) g^2
        Phi <- Phi - eta (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The two moment updates and the last line are multiply-adds, one BLAS ?axpby pass each, as in SGD.
    """

    state_names = ("m", "v")

    def __init__(self, params, grads, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, grads, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self._denominator = np.empty_like(params)    # holds g^2, then sqrt(v_hat) + eps, then the step
        g = self._scratch if weight_decay else self.grads
        # NumPy's fallback computes a x in the given scratch: x itself where x is not needed after
        # (g^2; the step), never the caller's gradient buffer
        self._v_update = Axpby(self._denominator, self.v, self._kernel, self._denominator)
        self._m_update = Axpby(g, self.m, self._kernel, self._scratch)
        self._direction = self._update_scratch = self._denominator
        self._bind_update()

    def step(self, lr: float):
        g = self._gradient()   # g = grad + wd Phi
        t = self.steps_taken + 1
        b1, b2 = self.beta1, self.beta2
        work = self._denominator
        np.multiply(g, g, out=work)
        self._v_update(1 - b2, b2)                   # v <- b2 v + (1 - b2) g^2
        self._m_update(1 - b1, b1)                   # m <- b1 m + (1 - b1) g
        np.sqrt(self.v, out=work)
        work *= 1 / math.sqrt(1 - b2 ** t)           # sqrt(v_hat) = sqrt(v) / sqrt(1 - b2^t)
        work += self.eps
        np.divide(self.m, work, out=work)            # m / (sqrt(v_hat) + eps)
        self._update_parameters(-lr / (1 - b1 ** t))  # Phi <- Phi - eta m_hat / (sqrt(v_hat) + eps)
        self.steps_taken = t


# -- learning-rate schedules ------------------------------------------------------------------

SCHEDULES = ("constant", "step", "cosine")


def learning_rate(step: int, base_lr: float, schedule: str = "constant", total_steps: int = 0,
                  warmup_steps: int = 0, step_size: int = 0, gamma: float = 0.1,
                  min_lr: float = 0.0) -> float:
    """eta at optimizer step ``step`` (counting from 0).

    warm-up  (Goyal et al. 2017): eta = base * (step + 1) / warmup_steps   while step < warmup_steps
    constant: eta = base
    step:     eta = base * gamma ** floor((step - warmup) / step_size)
    cosine:   eta = min + (base - min) (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        if step_size <= 0:
            raise ValueError("the 'step' schedule needs step_size > 0")
        return base_lr * gamma ** (t // step_size)
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min(t / span, 1.0)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{schedule}'; choose one of {list(SCHEDULES)}")
