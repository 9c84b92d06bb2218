"""The Graph: deterministic order, the flat buffers, backward's seed, accumulation, state dicts."""

import numpy as np
import pytest

from ddp_edf import (Add, Affine, CompNode, Graph, Input, Parameter, Relu, ShapeError, SoftmaxCrossEntropy, Tanh,
                     build_model)


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


def test_backward_zeroes_every_gradient_first():
    """The lecture's Backward: whatever the buffers held before (an earlier step, garbage), every
    parameter and node gradient starts from zero, so each op may simply add."""
    rng = np.random.default_rng(5)
    x, y, loss = small_net(rng)
    graph = Graph([loss], dtype=np.float64)
    x.value, y.value = rng.standard_normal((3, 4)), rng.integers(0, 2, 3)
    graph.forward()
    graph.backward(loss, 1.0)
    first = graph.grads.copy()
    node_grads = [n.grad.copy() for n in graph.comp_nodes]
    graph.grads[:] = np.nan
    for node in graph.comp_nodes:
        node.grad[...] = 1e30
    graph.backward(loss, 1.0)
    np.testing.assert_array_equal(graph.grads, first)
    for node, before in zip(graph.comp_nodes, node_grads):
        np.testing.assert_array_equal(node.grad, before)


def test_accumulate_adds_to_the_parameter_gradients():
    """accumulate=True (micro-batches) keeps what the parameter gradients hold and adds to it."""
    rng = np.random.default_rng(6)
    x, y, loss = small_net(rng)
    graph = Graph([loss], dtype=np.float64)
    x.value, y.value = rng.standard_normal((3, 4)), rng.integers(0, 2, 3)
    graph.forward()
    graph.backward(loss, 1.0)
    once = graph.grads.copy()
    graph.backward(loss, 1.0, accumulate=True)
    np.testing.assert_allclose(graph.grads, 2 * once, rtol=1e-15)


def test_the_gradients_pack_into_a_buffer_given_and_backward_leaves_the_rest_of_it_alone():
    """A reducer owns the buffer (its slots behind the gradients ride in its one collective)."""
    x, y, loss = small_net(np.random.default_rng(0))
    owner = np.full(100, 5.0, np.float32)
    graph = Graph([loss], grad_buffer=lambda n: owner[:n])
    n = graph.num_params
    assert np.shares_memory(graph.grads, owner) and all(np.shares_memory(p.grad, owner) for p in graph.parameters)
    x.value, y.value = np.ones((2, 4), np.float32), np.array([0, 1])
    graph.forward()
    graph.backward(loss, 0.5)
    assert graph.grads.any() and (owner[n:] == 5.0).all()
    with pytest.raises(ValueError, match="grad_buffer gave float64"):
        Graph([loss], grad_buffer=lambda n: np.zeros(n))


def test_the_structure_names_every_op_and_its_wiring():
    """Two graphs with the same parameters but another op differ in their structure (a checkpoint keeps it)."""
    def net(activation):
        x = Input("x")
        W, b = Parameter("W", np.ones((3, 2))), Parameter("b", np.zeros(2))
        return Graph([activation(Affine(x, W, b, name="fc"), name="act")])
    relu, tanh = net(Relu).structure(), net(Tanh).structure()
    assert relu == [["Input", "x", []], ["Parameter", "W", []], ["Parameter", "b", []], ["Affine", "fc", [0, 1, 2]],
                    ["Relu", "act", [3]]]
    assert tanh[:4] == relu[:4] and tanh[4] == ["Tanh", "act", [3]]


class WrongShape(CompNode):
    """y = 2 x, whose backward gives x a gradient of the wrong shape, in one of three ways."""

    def __init__(self, x, how):
        super().__init__(x)
        self.x, self.how = x, how

    def forward(self):
        self.value = 2 * self.x.value

    def backward(self):
        wrong = (2 * self.grad).sum(axis=0)                 # (J,) where x is (B, J): it would broadcast
        if self.how == "assign":
            self.x.grad = wrong
        elif self.how == "addgrad":
            self.x.addgrad(wrong)
        else:
            self.x.grad = np.zeros(3)                       # a Parameter's grad: a view of the flat buffer


@pytest.mark.parametrize("how", ["assign", "addgrad", "parameter"])
def test_a_gradient_of_the_wrong_shape_is_blamed_on_the_op_that_gave_it(how):
    x = Input("x", np.ones((4, 3)))
    W, b = Parameter("W", np.ones((3, 2))), Parameter("b", np.zeros(2))
    h = Affine(x, W, b, name="fc") if how != "parameter" else W
    out = Relu(WrongShape(h, how), name="act")
    graph = Graph([out], dtype=np.float64)
    graph.forward()
    with pytest.raises(ShapeError, match=r"^WrongShape.backward.* gradient of shape \((2|3),\)"):
        graph.backward(out, np.ones_like(out.value))


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
    with pytest.raises(ValueError, match=r"two parameters share a name in \['fc0.W', 'fc0.b', 'fc0.W', 'fc1.b'\]"):
        Graph([out])


def graph_of(*args, **kwargs) -> Graph:
    return Graph(build_model(*args, **kwargs).outputs)


def test_state_dict_round_trip_and_mismatch_errors():
    model, other = graph_of("mlp", 6, 3, hidden=[4], seed=1), graph_of("mlp", 6, 3, hidden=[4], seed=2)
    assert not np.array_equal(other.params, model.params)
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other.params, model.params)
    assert model.layout() == [["fc0.W", [6, 4]], ["fc0.b", [4]], ["fc1.W", [4, 3]], ["fc1.b", [3]]]
    with pytest.raises(ValueError, match="'fc0.W' has shape"):
        graph_of("mlp", 6, 3, hidden=[5]).load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match=r"missing \['fc2.W', 'fc2.b'\]"):
        graph_of("mlp", 6, 3, hidden=[4, 4]).load_state_dict(model.state_dict())


def test_a_newer_graph_over_the_same_parameters_takes_them_over():
    """Two Graphs (or a Graph and a Trainer) over one model: the older one would train nothing, so it refuses."""
    x, y, loss = small_net(np.random.default_rng(0))
    first = Graph([loss])
    first.params[:] = 0.5
    second = Graph([loss])
    assert np.all(second.params == 0.5) and all(p.graph is second for p in second.parameters)
    with pytest.raises(RuntimeError, match="a newer Graph"):
        first.forward()
