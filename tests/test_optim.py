"""Optimizers against hand-computed references, step by step; the schedules' formulas."""

import math

import numpy as np
import pytest

from ddp_edf import SGD, Adam, learning_rate

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.5, 1.0]), np.array([1.0, 1.0, -3.0]),
         np.array([0.0, -2.0, 0.5])]
START = [1.0, -0.5, 0.25]


def run(optimizer_class, lrs=(0.1, 0.1, 0.05, 0.05), **options):
    params = np.array(START)
    grads = np.zeros(3)
    optimizer = optimizer_class(params, grads, **options)
    history = []
    for g, lr in zip(GRADS, lrs):
        grads[:] = g
        optimizer.step(lr)
        history.append(params.copy())
    return history, optimizer


@pytest.fixture(params=["blas", "numpy"])
def axpby_way(request, monkeypatch):
    """The optimizers' multiply-adds through OpenBLAS's axpby (where NumPy has it) and through NumPy's passes."""
    if request.param == "numpy":
        monkeypatch.setattr("ddp_edf.optim.find_blas_axpby", lambda dtype: None)
    return request.param


def scalar_reference(update):
    """Apply ``update(p, g, lr, state, t)`` entry by entry with plain Python floats."""
    history, states = [], [dict() for _ in START]
    params = list(START)
    for t, (g, lr) in enumerate(zip(GRADS, (0.1, 0.1, 0.05, 0.05)), start=1):
        params = [update(p, float(gi), lr, s, t) for p, gi, s in zip(params, g, states)]
        history.append(list(params))
    return history


def test_plain_sgd_is_the_lectures_rule(axpby_way):
    history, _ = run(SGD)
    expected = scalar_reference(lambda p, g, lr, s, t: p - lr * g)
    np.testing.assert_allclose(history, expected, rtol=1e-15)


def test_sgd_momentum(axpby_way):
    def update(p, g, lr, s, t):
        s["v"] = 0.9 * s.get("v", 0.0) + g
        return p - lr * s["v"]
    history, _ = run(SGD, momentum=0.9)
    np.testing.assert_allclose(history, scalar_reference(update), rtol=1e-14)


def test_sgd_weight_decay_without_momentum(axpby_way):
    history, _ = run(SGD, weight_decay=0.01)
    np.testing.assert_allclose(history, scalar_reference(lambda p, g, lr, s, t: p - lr * (g + 0.01 * p)), rtol=1e-14)


def test_sgd_nesterov_with_weight_decay(axpby_way):
    def update(p, g, lr, s, t):
        g = g + 0.01 * p
        s["v"] = 0.9 * s.get("v", 0.0) + g
        return p - lr * (g + 0.9 * s["v"])
    history, _ = run(SGD, momentum=0.9, nesterov=True, weight_decay=0.01)
    np.testing.assert_allclose(history, scalar_reference(update), rtol=1e-14)


@pytest.mark.parametrize("decay", [0.0, 0.001])
def test_adam(axpby_way, decay):
    def update(p, g, lr, s, t):
        g = g + decay * p
        s["m"] = 0.9 * s.get("m", 0.0) + 0.1 * g
        s["v"] = 0.999 * s.get("v", 0.0) + 0.001 * g * g
        m_hat, v_hat = s["m"] / (1 - 0.9 ** t), s["v"] / (1 - 0.999 ** t)
        return p - lr * m_hat / (math.sqrt(v_hat) + 1e-8)
    history, optimizer = run(Adam, weight_decay=decay)
    np.testing.assert_allclose(history, scalar_reference(update), rtol=1e-12)
    np.testing.assert_array_equal(optimizer.grads, GRADS[-1])   # Adam never writes the caller's gradient


def test_optimizer_state_round_trip_continues_identically():
    full, _ = run(Adam)
    params, grads = np.array(START), np.zeros(3)
    first = Adam(params, grads)
    for g in GRADS[:2]:
        grads[:] = g
        first.step(0.1)
    second = Adam(params, grads)
    second.load_state_dict(first.state_dict())
    for g, lr in zip(GRADS[2:], (0.05, 0.05)):
        grads[:] = g
        second.step(lr)
    np.testing.assert_array_equal(params, full[-1])


def test_float32_step_stays_float32_in_place(axpby_way):
    params, grads = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    buffer_id = id(params)
    SGD(params, grads, momentum=0.9, nesterov=True, weight_decay=1e-4).step(0.1)
    assert params.dtype == np.float32 and id(params) == buffer_id


def test_schedules():
    assert learning_rate(0, 0.1) == 0.1
    # linear warm-up over 4 steps, then constant
    assert [learning_rate(t, 0.4, warmup_steps=4) for t in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    # step decay: x0.1 every 10 steps after warm-up
    assert learning_rate(9, 1.0, "step", step_size=10) == 1.0
    assert learning_rate(10, 1.0, "step", step_size=10) == pytest.approx(0.1)
    assert learning_rate(25, 1.0, "step", step_size=10, gamma=0.5) == pytest.approx(0.25)
    # cosine from base to min over total - warmup steps
    assert learning_rate(2, 1.0, "cosine", total_steps=102, warmup_steps=2) == pytest.approx(1.0)
    assert learning_rate(52, 1.0, "cosine", total_steps=102, warmup_steps=2) == pytest.approx(0.5)
    assert learning_rate(102, 1.0, "cosine", total_steps=102, warmup_steps=2, min_lr=0.01) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        learning_rate(0, 0.1, "exp")
