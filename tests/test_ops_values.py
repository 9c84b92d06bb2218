"""Forward values against closed forms, numerical robustness, and shape errors."""

import numpy as np
import pytest

from ddp_edf import (Affine, ErrorRate, Graph, Input, LogLoss, Parameter, Relu, ShapeError, Sigmoid,
                     Softmax, SoftmaxCrossEntropy, Tanh)


def run(node, dtype=np.float64):
    Graph([node], dtype=dtype).forward()
    return node.value


def test_affine_forward_is_xW_plus_b():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2)
    y = run(Affine(Input("x", x), Parameter("W", W), Parameter("b", b)))
    expected = [[sum(x[n, i] * W[i, j] for i in range(4)) + b[j] for j in range(2)] for n in range(3)]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_affine_weight_gradient_equals_the_lectures_broadcast_sum():
    """W.grad from one GEMM equals the slide's sum over b of x[b,:,None] * y.grad[b,None,:]."""
    rng = np.random.default_rng(1)
    x = Input("x", rng.standard_normal((5, 4)))
    W, b = Parameter("W", rng.standard_normal((4, 3))), Parameter("b", np.zeros(3))
    y = Affine(x, W, b)
    graph = Graph([y], dtype=np.float64)
    graph.forward()
    seed = rng.standard_normal((5, 3))
    graph.backward(y, seed)
    lecture = np.sum(x.value[:, :, np.newaxis] * seed[:, np.newaxis, :], axis=0)
    np.testing.assert_allclose(W.grad, lecture, rtol=1e-12)
    np.testing.assert_allclose(b.grad, seed.sum(axis=0), rtol=1e-12)


def test_input_gets_no_gradient_by_default():
    """As in the lecture: nothing is kept for an Input (its grad reads as zeros, what is added is dropped)."""
    x = Input("x", np.ones((2, 3)))
    y = Affine(x, Parameter("W", np.ones((3, 2))), Parameter("b", np.zeros(2)))
    graph = Graph([y], dtype=np.float64)
    graph.forward()
    graph.backward(y, 1.0)
    x.grad += 5.0
    x.addgrad(np.ones((2, 3)))
    assert x.grad.shape == (2, 3) and not x.grad.any()


def test_sigmoid_is_finite_and_exact_at_extremes():
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = run(Sigmoid(Input("x", x)), np.float32)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64).clip(-700, 700))), atol=1e-7)
    assert y[0, 2] == 0.5


def test_softmax_rows_sum_to_one_and_match_closed_form():
    s = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    Q = run(Softmax(Input("s", s)))
    np.testing.assert_allclose(Q[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-12)
    np.testing.assert_allclose(Q[1], [0.5, 0.5, 0.0], atol=1e-300)


def test_softmax_cross_entropy_equals_softmax_then_logloss():
    rng = np.random.default_rng(2)
    s, y = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    fused = run(SoftmaxCrossEntropy(Input("s", s), Input("y", y)))
    lecture = run(LogLoss(Softmax(Input("s", s)), Input("y", y)))
    np.testing.assert_allclose(fused, lecture, rtol=1e-12)


def test_softmax_cross_entropy_finite_for_huge_logits():
    s = Input("s", np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]], np.float32),
              requires_grad=True)
    y = Input("y", np.array([1, 1, 2]))
    loss = SoftmaxCrossEntropy(s, y)
    graph = Graph([loss], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        graph.forward()
        graph.backward(loss, 1.0)
    np.testing.assert_allclose(loss.value, [2e4, 0.0, np.log(3)], rtol=1e-6)
    # backward is Q - onehot
    np.testing.assert_allclose(s.grad, [[1, -1, 0], [0, 0, 0], [1 / 3, 1 / 3, -2 / 3]], atol=1e-6)


@pytest.mark.parametrize("low", [-59.0, -300.0, -3e4])
def test_softmax_cross_entropy_float32_matches_float64_for_rows_far_apart(low):
    """Rows whose scores lie far apart in one batch: float32 loss and gradient agree with a float64
    log-sum-exp for every row (no shift shared across the batch may push a row into underflow)."""
    s = np.array([[3.0, -1.0, 0.5, 2.0], [low, low - 0.5, low + 0.25, low - 1.0], [0.0, 0.0, 0.0, 0.0]])
    y = np.array([1, 2, 3])
    z = s - s.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(z).sum(axis=1))
    expected_loss = log_z - z[np.arange(3), y]
    expected_grad = np.exp(z - log_z[:, None]) - np.eye(4)[y]
    scores = Input("s", s.astype(np.float32), requires_grad=True)
    loss = SoftmaxCrossEntropy(scores, Input("y", y))
    graph = Graph([loss], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        graph.forward()
        graph.backward(loss, 1.0)
    np.testing.assert_allclose(loss.value, expected_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(scores.grad, expected_grad, atol=1e-6)


def test_softmax_cross_entropy_per_example_loss_does_not_depend_on_the_batch():
    """Bit for bit: what sharded evaluation (any batch size, any number of ranks) relies on."""
    rng = np.random.default_rng(5)
    s = (rng.standard_normal((300, 10)) * 8).astype(np.float32)
    y = rng.integers(0, 10, 300)
    whole = run(SoftmaxCrossEntropy(Input("s", s), Input("y", y)))
    for size in (1, 7, 64, 128):
        op = SoftmaxCrossEntropy(Input("s"), Input("y"))
        parts = []
        for lo in range(0, 300, size):
            op.s.value, op.y.value = s[lo:lo + size], y[lo:lo + size]
            op.forward()
            parts.append(op.value.copy())
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_error_rate_counts_wrong_argmax():
    s = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    err = run(ErrorRate(Input("s", s), Input("y", np.array([1, 1, 0]))))
    np.testing.assert_array_equal(err, [0.0, 1.0, 1.0])


def test_error_rate_has_no_backward():
    s = Input("s", np.ones((2, 2)), requires_grad=True)
    err = ErrorRate(s, Input("y", np.array([0, 1])))
    graph = Graph([err], dtype=np.float64)
    graph.forward()
    with pytest.raises(ValueError, match="no gradient"):
        graph.backward(err, 1.0)


def test_relu_and_tanh_values():
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(run(Relu(Input("x", x))), [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(run(Tanh(Input("x", x))), np.tanh(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_equals_max_and_passes_nan_on(dtype):
    x = (np.random.default_rng(0).standard_normal((64, 33)) * 10.0 ** np.arange(-30, 36, 2)).astype(dtype)
    x[0, :3] = [np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny]
    np.testing.assert_array_equal(run(Relu(Input("x", x))), np.where(x > 0, x, 0))
    y = run(Relu(Input("x", np.array([[np.nan, -np.inf, np.inf, -1.0]], dtype))))
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == np.inf and y[0, 3] == 0   # NaN surfaces in the loss


def test_affine_shape_mismatch_names_op_inputs_and_shapes():
    y = Affine(Input("x", np.ones((2, 5))), Parameter("fc0.W", np.ones((4, 3))), Parameter("fc0.b", np.zeros(3)),
               name="fc0")
    with pytest.raises(ShapeError) as error:
        run(y)
    message = str(error.value)
    assert "Affine 'fc0'" in message and "(2, 5)" in message and "(4, 3)" in message and "fc0.W" in message


def test_labels_out_of_range_are_reported():
    loss = SoftmaxCrossEntropy(Input("s", np.zeros((2, 3))), Input("y", np.array([0, 7])), name="loss")
    with pytest.raises(ShapeError, match=r"labels must lie in \[0, 3\)"):
        run(loss)


@pytest.mark.parametrize("dtype", ["<i8", ">i4", "i1", "<u2"])
def test_negative_or_too_large_labels_are_reported_for_any_integer_type(dtype):
    """The range check reads labels as unsigned (one reduction): a negative one must still be caught,
    whatever the width and byte order, and valid ones must pass."""
    for op in (SoftmaxCrossEntropy, ErrorRate):
        assert run(op(Input("s", np.zeros((3, 4))), Input("y", np.array([0, 3, 1], dtype)))).shape == (3,)
        bad = [[2, 4, 0]] + ([[0, -1, 2]] if np.dtype(dtype).kind == "i" else [])
        for labels in bad:
            with pytest.raises(ShapeError, match=r"labels must lie in \[0, 4\)"):
                run(op(Input("s", np.zeros((3, 4))), Input("y", np.array(labels, dtype))))


def test_labels_count_must_match_batch():
    loss = SoftmaxCrossEntropy(Input("s", np.zeros((2, 3))), Input("y", np.array([0, 1, 2])))
    with pytest.raises(ShapeError, match="labels must be"):
        run(loss)
