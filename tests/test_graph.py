"""The Graph: deterministic order, the flat buffers, backward's seed, accumulation, state dicts."""

import numpy as np
import pytest

from ddp_edf import Add, Affine, Graph, Input, Parameter, Relu, SoftmaxCrossEntropy, Tanh, build_model


def small_net(rng):
    x, y = Input("x"), Input("y")
    W0, b0 = Parameter("fc0.W", rng.standard_normal((4, 3))), Parameter("fc0.b", np.zeros(3))
    W1, b1 = Parameter("fc1.W", rng.standard_normal((3, 2))), Parameter("fc1.b", np.zeros(2))
    h = Relu(Affine(x, W0, b0))
    loss = SoftmaxCrossEntropy(Affine(h, W1, b1), y)
    return x, y, loss


def test_topological_order_is_deterministic_and_respects_edges():
    orders = []
    for _ in range(3):
        x, y, loss = small_net(np.random.default_rng(0))
        graph = Graph([loss])
        position = {id(n): k for k, n in enumerate(graph.nodes)}
        for node in graph.nodes:
            assert all(position[id(p)] < position[id(node)] for p in node.inputs)
        orders.append([type(n).__name__ + n.name for n in graph.nodes])
    assert orders[0] == orders[1] == orders[2]
    assert [p.name for p in Graph([loss]).parameters] == ["fc0.W", "fc0.b", "fc1.W", "fc1.b"]


def test_parameters_are_views_of_one_flat_buffer():
    x, y, loss = small_net(np.random.default_rng(0))
    graph = Graph([loss], dtype=np.float32)
    assert graph.params.dtype == np.float32 and graph.params.size == 4 * 3 + 3 + 3 * 2 + 2
    for p in graph.parameters:
        assert np.shares_memory(p.value, graph.params) and np.shares_memory(p.grad, graph.grads)
    graph.params[:] = 7.0
    assert np.all(graph.parameter("fc1.W").value == 7.0)


def test_graph_dtype_float64_for_checks():
    x, y, loss = small_net(np.random.default_rng(0))
    graph = Graph([loss], dtype=np.float64)
    assert graph.params.dtype == np.float64 and graph.grads.dtype == np.float64


def test_backward_with_one_over_batch_gives_gradient_of_the_mean():
    """Seeding 1/B on the per-example loss equals averaging per-example gradients."""
    rng = np.random.default_rng(5)
    x, y, loss = small_net(rng)
    graph = Graph([loss], dtype=np.float64)
    xs, ys = rng.standard_normal((6, 4)), rng.integers(0, 2, 6)
    x.value, y.value = xs, ys
    graph.forward()
    graph.backward(loss, 1 / 6)
    batch_grad = graph.grads.copy()
    singles = []
    for n in range(6):
        x.value, y.value = xs[n:n + 1], ys[n:n + 1]
        graph.forward()
        graph.backward(loss, 1.0)
        singles.append(graph.grads.copy())
    np.testing.assert_allclose(batch_grad, np.mean(singles, axis=0), rtol=1e-12, atol=1e-15)


def test_backward_zeroes_previous_gradients():
    rng = np.random.default_rng(5)
    x, y, loss = small_net(rng)
    graph = Graph([loss], dtype=np.float64)
    x.value, y.value = rng.standard_normal((3, 4)), rng.integers(0, 2, 3)
    graph.forward()
    graph.backward(loss, 1.0)
    first = graph.grads.copy()
    graph.backward(loss, 1.0)
    np.testing.assert_array_equal(graph.grads, first)


def test_shared_parameter_accumulates_both_uses():
    """W used twice: its gradient is the sum of both contributions (the lecture's loop invariant)."""
    x = Input("x", np.array([[1.0, 2.0]]))
    W, b = Parameter("W", np.eye(2)), Parameter("b", np.zeros(2))
    out = Add(Affine(x, W, b), Affine(x, W, b))       # out = 2 (x W + b)
    graph = Graph([out], dtype=np.float64)
    graph.forward()
    graph.backward(out, 1.0)
    np.testing.assert_array_equal(W.grad, 2 * np.outer(x.value[0], [1.0, 1.0]))
    np.testing.assert_array_equal(b.grad, [2.0, 2.0])


def test_node_used_twice_by_add():
    x = Input("x", np.array([[0.3, -0.2]]), requires_grad=True)
    h = Tanh(x)
    out = Add(h, h)
    graph = Graph([out], dtype=np.float64)
    graph.forward()
    graph.backward(out, 1.0)
    np.testing.assert_allclose(x.grad, 2 * (1 - np.tanh(x.value) ** 2), rtol=1e-14)


def test_duplicate_parameter_names_are_refused():
    x = Input("x")
    h = Affine(x, Parameter("fc0.W", np.ones((2, 2))), Parameter("fc0.b", np.zeros(2)))
    out = Affine(h, Parameter("fc0.W", np.ones((2, 2))), Parameter("fc1.b", np.zeros(2)))
    with pytest.raises(ValueError, match="two parameters are named 'fc0.W'"):
        Graph([out])


def test_state_dict_round_trip_and_mismatch_errors():
    model = build_model("mlp", 6, 3, hidden=[4], seed=1)
    other = build_model("mlp", 6, 3, hidden=[4], seed=2)
    other.graph.load_state_dict(model.graph.state_dict())
    np.testing.assert_array_equal(other.graph.params, model.graph.params)
    with pytest.raises(ValueError, match="'fc0.W' has shape"):
        build_model("mlp", 6, 3, hidden=[5]).graph.load_state_dict(model.graph.state_dict())
    with pytest.raises(ValueError, match=r"missing \['fc2.W', 'fc2.b'\]"):
        build_model("mlp", 6, 3, hidden=[4, 4]).graph.load_state_dict(model.graph.state_dict())


def test_step_allocates_no_new_buffers_when_warm():
    """Activation buffers are reused across steps of the same batch size."""
    model = build_model("mlp", 8, 3, hidden=[5])
    rng = np.random.default_rng(0)
    model.x.value = rng.random((4, 8), dtype=np.float32)
    model.y.value = rng.integers(0, 3, 4)
    model.graph.forward()
    model.graph.backward(model.loss, 0.25)
    hidden = model.graph.comp_nodes[0]
    value_id, grad_id = id(hidden.value), id(hidden.grad)
    model.graph.forward()
    model.graph.backward(model.loss, 0.25)
    assert id(hidden.value) == value_id and id(hidden.grad) == grad_id


def test_views_can_be_restored_after_moving_to_other_buffers():
    """What the trainer does with a ring of buffers: move, remember, come back without slicing again."""
    model = build_model("mlp", 6, 3, hidden=[4], seed=1)
    graph = model.graph
    first = graph.views()
    other_params, other_grads = graph.params.copy() + 1, np.zeros_like(graph.grads)
    graph.params_into(other_params)
    graph.grads_into(other_grads)
    W = graph.parameter("fc0.W")
    assert np.shares_memory(W.value, other_params) and np.shares_memory(W.grad, other_grads)
    second = graph.views()
    graph.restore_views(first)
    assert graph.params is first[0] and graph.grads is first[1]
    assert all(p.value is value and p.grad is grad for p, value, grad in first[2])
    graph.restore_views(second)
    assert graph.params is other_params and np.shares_memory(W.value, other_params)
