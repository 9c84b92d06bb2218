"""Optimizers against hand-computed references, step by step; the schedules' formulas."""

import math

import numpy as np
import pytest

from ddp_edf import SGD, Adam, Schedule

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.5, 1.0]), np.array([1.0, 1.0, -3.0]),
         np.array([0.0, -2.0, 0.5])]
START = [1.0, -0.5, 0.25]


def run(optimizer_class, lrs=(0.1, 0.1, 0.05, 0.05), **options):
    params = np.array(START)
    grads = np.zeros(3)
    optimizer = optimizer_class(**options)
    history = []
    for g, lr in zip(GRADS, lrs):
        grads[:] = g
        optimizer.step(params, grads, lr)
        history.append(params.copy())
    assert np.array_equal(grads, GRADS[-1])   # an optimizer never writes the caller's gradient
    return history, optimizer


def scalar_reference(update):
    """Apply ``update(p, g, lr, state, t)`` entry by entry with plain Python floats."""
    history, states = [], [dict() for _ in START]
    params = list(START)
    for t, (g, lr) in enumerate(zip(GRADS, (0.1, 0.1, 0.05, 0.05)), start=1):
        params = [update(p, float(gi), lr, s, t) for p, gi, s in zip(params, g, states)]
        history.append(list(params))
    return history


def test_plain_sgd_is_the_lectures_rule():
    history, _ = run(SGD)
    expected = scalar_reference(lambda p, g, lr, s, t: p - lr * g)
    np.testing.assert_allclose(history, expected, rtol=1e-15)


def test_sgd_momentum():
    def update(p, g, lr, s, t):
        s["v"] = 0.9 * s.get("v", 0.0) + g
        return p - lr * s["v"]
    history, _ = run(SGD, momentum=0.9)
    np.testing.assert_allclose(history, scalar_reference(update), rtol=1e-14)


def test_sgd_weight_decay_without_momentum():
    history, _ = run(SGD, weight_decay=0.01)
    np.testing.assert_allclose(history, scalar_reference(lambda p, g, lr, s, t: p - lr * (g + 0.01 * p)), rtol=1e-14)


def test_sgd_nesterov_with_weight_decay():
    def update(p, g, lr, s, t):
        g = g + 0.01 * p
        s["v"] = 0.9 * s.get("v", 0.0) + g
        return p - lr * (g + 0.9 * s["v"])
    history, _ = run(SGD, momentum=0.9, nesterov=True, weight_decay=0.01)
    np.testing.assert_allclose(history, scalar_reference(update), rtol=1e-14)


@pytest.mark.parametrize("decay", [0.0, 0.001])
def test_adam(decay):
    def update(p, g, lr, s, t):
        g = g + decay * p
        s["m"] = 0.9 * s.get("m", 0.0) + 0.1 * g
        s["v"] = 0.999 * s.get("v", 0.0) + 0.001 * g * g
        m_hat, v_hat = s["m"] / (1 - 0.9 ** t), s["v"] / (1 - 0.999 ** t)
        return p - lr * m_hat / (math.sqrt(v_hat) + 1e-8)
    history, optimizer = run(Adam, weight_decay=decay)
    np.testing.assert_allclose(history, scalar_reference(update), rtol=1e-12)


def test_optimizer_state_round_trip_continues_identically():
    full, _ = run(Adam)
    params = np.array(START)
    first = Adam()
    for g in GRADS[:2]:
        first.step(params, g, 0.1)
    second = Adam()
    second.load_state_dict(first.state_dict(), dtype=np.float64)
    for g, lr in zip(GRADS[2:], (0.05, 0.05)):
        second.step(params, g, lr)
    np.testing.assert_array_equal(params, full[-1])


def test_float32_step_stays_float32_in_place():
    params, grads = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    buffer_id = id(params)
    SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4).step(params, grads)
    assert params.dtype == np.float32 and id(params) == buffer_id


def test_lr_defaults_and_bad_hyper_parameters():
    params = np.array([1.0])
    SGD(lr=0.5).step(params, np.array([2.0]))
    assert params[0] == 0.0
    for make, message in ((lambda: SGD(lr=0), "SGD: lr = 0 must be > 0"),
                          (lambda: SGD(momentum=1.0), "SGD: momentum = 1.0 must be in"),
                          (lambda: SGD(nesterov=True), "SGD: nesterov = True needs momentum > 0"),
                          (lambda: SGD(lr=float("nan")), "SGD: lr = nan must be > 0"),
                          (lambda: Adam(betas=(1.0, 0.9)), "Adam: beta1 = 1.0"),
                          (lambda: Adam(weight_decay=-1), "Adam: weight_decay = -1 must be >= 0")):
        with pytest.raises(ValueError, match=message):
            make()


def test_schedules():
    assert Schedule()(0, 0.1) == 0.1
    # linear warm-up over 4 steps, then constant
    assert [Schedule(warmup_steps=4)(t, 0.4) for t in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    # step decay: x0.1 every 10 steps after warm-up
    assert Schedule("step", step_size=10)(9, 1.0) == 1.0
    assert Schedule("step", step_size=10)(10, 1.0) == pytest.approx(0.1)
    assert Schedule("step", step_size=10, gamma=0.5)(25, 1.0) == pytest.approx(0.25)
    # cosine from base to min over total - warmup steps
    cosine = Schedule("cosine", warmup_steps=2)
    assert cosine(2, 1.0, total_steps=102) == pytest.approx(1.0)
    assert cosine(52, 1.0, total_steps=102) == pytest.approx(0.5)
    assert Schedule("cosine", warmup_steps=2, min_lr=0.01)(102, 1.0, total_steps=102) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="Schedule: kind = 'exp' is not one of"):
        Schedule("exp")
    with pytest.raises(ValueError, match="step_size = 0 must be >= 1 for the 'step' schedule"):
        Schedule("step")
    with pytest.raises(ValueError, match="min_lr = 0.5 exceeds lr = 0.1"):
        Schedule("cosine", min_lr=0.5).check(0.1)


@pytest.mark.parametrize("optimizer_class,options", [(SGD, {"lr": 0.1, "momentum": 0.9}), (Adam, {"lr": 0.01})])
def test_clip_norm_scales_a_large_gradient_to_the_norm_and_leaves_a_small_one(optimizer_class, options):
    """grad <- grad min(1, c / (||grad|| + 1e-6)), before weight decay: against the unclipped optimizer fed the
    clipped gradient by hand."""
    for g, c in ((np.array([3.0, -4.0, 12.0]), 2.6), (np.array([0.3, -0.4, 1.2]), 2.6)):   # ||g|| = 13 and 1.3
        clipped, plain = optimizer_class(clip_norm=c, weight_decay=0.01, **options), \
            optimizer_class(weight_decay=0.01, **options)
        p1, p2 = np.array(START), np.array(START)
        for _ in range(3):
            clipped.step(p1, g)
            plain.step(p2, g * min(1.0, c / (np.linalg.norm(g) + 1e-6)))
        np.testing.assert_allclose(p1, p2, rtol=1e-14)
    with pytest.raises(ValueError, match="clip_norm = -1 must be >= 0"):
        SGD(clip_norm=-1)
