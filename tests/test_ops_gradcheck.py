"""Every op's backward against float64 central differences (ddp_edf.gradcheck), one list of ops."""

import numpy as np
import pytest

from ddp_edf import (Add, Affine, CompNode, Graph, Input, LogLoss, Parameter, Relu, Sigmoid,
                     Softmax, SoftmaxCrossEntropy, Tanh, gradcheck)

B, I, J, K = 4, 5, 3, 3


def away_from_zero(rng, shape, low=0.1, high=1.5):
    """Random values with |v| >= low, so Relu's kink at 0 is never within eps of a test point."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def affine_graph(rng):
    x = Input("x", away_from_zero(rng, (B, I)), requires_grad=True)
    W = Parameter("W", rng.standard_normal((I, J)))
    b = Parameter("b", rng.standard_normal(J))
    return Affine(x, W, b)


def unary_graph(op):
    def build(rng):
        return op(Input("x", away_from_zero(rng, (B, J)), requires_grad=True))
    return build


def softmax_graph(rng):
    return Softmax(Input("s", rng.standard_normal((B, K)) * 3, requires_grad=True))


def logloss_graph(rng):
    Q = rng.uniform(0.05, 1.0, (B, K))
    return LogLoss(Input("Q", Q / Q.sum(axis=1, keepdims=True), requires_grad=True),
                   Input("y", rng.integers(0, K, B)))


def softmax_cross_entropy_graph(rng):
    return SoftmaxCrossEntropy(Input("s", rng.standard_normal((B, K)) * 3, requires_grad=True),
                               Input("y", rng.integers(0, K, B)))


def add_graph(rng):
    return Add(Input("u", rng.standard_normal((B, J)), requires_grad=True),
               Input("v", rng.standard_normal((B, J)), requires_grad=True))


def shared_nodes_graph(rng):
    """A node used twice: x feeds two Affines, W is shared by both, h feeds Add twice."""
    x = Input("x", away_from_zero(rng, (B, I)), requires_grad=True)
    W = Parameter("W", rng.standard_normal((I, I)))
    b = Parameter("b", rng.standard_normal(I))
    h = Tanh(Affine(x, W, b))
    twice = Add(h, h)                       # d/dh of (h + h) is 2
    return Add(Affine(twice, W, b), Affine(x, W, b))


OP_GRAPHS = {
    "Affine": affine_graph,
    "Relu": unary_graph(Relu),
    "Sigmoid": unary_graph(Sigmoid),
    "Tanh": unary_graph(Tanh),
    "Add": add_graph,
    "Softmax": softmax_graph,
    "LogLoss": logloss_graph,
    "SoftmaxCrossEntropy": softmax_cross_entropy_graph,
    "node used twice": shared_nodes_graph,
}


@pytest.mark.parametrize("name", sorted(OP_GRAPHS))
def test_backward_matches_central_differences(name):
    rng = np.random.default_rng(42)
    output = OP_GRAPHS[name](rng)
    graph = Graph([output], dtype=np.float64)
    report = gradcheck(graph, output)
    assert report.ok, str(report)
    assert report.worst <= 1e-6
    # every differentiable input and parameter was checked
    wanted = [n.name for n in graph.nodes if isinstance(n, Parameter) or (isinstance(n, Input) and n.needs_grad)]
    assert [c.name for c in report.checks] == wanted and wanted


class WrongSigmoid(Sigmoid):
    """A deliberately wrong backward: forgets the factor (1 - y)."""

    def backward(self):
        self.x.addgrad(self.grad * self.value)


class ForgetfulAdd(Add):
    """Assigns instead of accumulating: breaks the lecture's loop invariant."""

    def backward(self):
        self.u.grad[...] = self.grad
        self.v.grad[...] = self.grad


@pytest.mark.parametrize("bad_graph", [
    lambda rng: WrongSigmoid(Input("x", rng.standard_normal((B, J)), requires_grad=True)),
    lambda rng: ForgetfulAdd(*(2 * [Tanh(Input("x", rng.standard_normal((B, J)), requires_grad=True))])),
])
def test_wrong_backward_fails_the_check(bad_graph):
    output = bad_graph(np.random.default_rng(0))
    report = gradcheck(Graph([output], dtype=np.float64), output)
    assert not report.ok
    assert report.worst > 1e-3
    assert "FAIL" in str(report)


def test_gradcheck_refuses_float32_graph():
    output = Relu(Input("x", np.ones((2, 2), np.float32), requires_grad=True))
    with pytest.raises(TypeError, match="float64"):
        gradcheck(Graph([output], dtype=np.float32), output)


def test_gradcheck_report_names_every_tensor():
    output = affine_graph(np.random.default_rng(3))
    report = gradcheck(Graph([output], dtype=np.float64), output)
    assert [c.name for c in report.checks] == ["x", "W", "b"]
    assert [c.entries for c in report.checks] == [B * I, I * J, J]


def test_gradcheck_samples_entries_of_large_tensors():
    output = affine_graph(np.random.default_rng(3))
    report = gradcheck(Graph([output], dtype=np.float64), output, max_entries=4)
    assert [c.entries for c in report.checks] == [4, 4, J]
    assert report.ok


class Square(CompNode):
    """A student's own op, the way the gradcheck docstring shows: y = x^2."""

    def __init__(self, x):
        super().__init__(x)
        self.x = x

    def forward(self):
        self.value = self.x.value ** 2

    def backward(self):
        self.x.addgrad(self.grad * 2 * self.x.value)


def test_students_own_op_passes():
    x = Input("x", np.random.default_rng(1).standard_normal((3, 2)), requires_grad=True)
    y = Square(x)
    assert gradcheck(Graph([y], dtype=np.float64), y).ok


# -- Ops written exactly as on the lecture's slides ------------------------------------------------
# The engine's contract: backward zeroes every gradient, then each op adds.  An op that writes
# `self.x.grad += ...` (the slide's Sigmoid) or calls `self.x.addgrad(...)` must be correct, also
# after an Affine, also when its input is used twice, and over several backward passes.

class SlideSigmoid(CompNode):
    """The lecture's Sigmoid class, line for line (its forward; its backward with `+=`)."""

    def __init__(self, x):
        super().__init__(x)
        self.x = x

    def forward(self):
        self.value = 1. / (1. + np.exp(-self.x.value))

    def backward(self):
        self.x.grad += self.grad * self.value * (1. - self.value)


class SlideSigmoidAddgrad(SlideSigmoid):
    def backward(self):
        self.x.addgrad(self.grad * self.value * (1. - self.value))


def slide_affine(rng):
    x = Input("x", rng.standard_normal((B, I)))
    return Affine(x, Parameter("W", rng.standard_normal((I, J))), Parameter("b", rng.standard_normal(J)))


@pytest.mark.parametrize("op", [SlideSigmoid, SlideSigmoidAddgrad])
def test_slide_style_op_after_affine_is_correct(op):
    out = op(slide_affine(np.random.default_rng(7)))
    graph = Graph([out], dtype=np.float64)
    report = gradcheck(graph, out)
    assert report.ok and [c.name for c in report.checks] == ["W", "b"], str(report)
    again = gradcheck(graph, out)     # a second pass over the same buffers: still zeroed first
    assert again.ok, str(again)


@pytest.mark.parametrize("op", [SlideSigmoid, SlideSigmoidAddgrad])
def test_slide_style_op_used_twice_and_in_a_loss(op):
    rng = np.random.default_rng(8)
    h = slide_affine(rng)
    scores = Add(op(h), op(h))        # the Affine's gradient receives two slide-style contributions
    loss = SoftmaxCrossEntropy(scores, Input("y", rng.integers(0, J, B)))
    report = gradcheck(Graph([loss], dtype=np.float64), loss)
    assert report.ok, str(report)


class SlideAffine(CompNode):
    """The slide's Affine backward with `+=` on every input: its x is the image Input (no gradient)."""

    def __init__(self, x, W, b):
        super().__init__(x, W, b)
        self.x, self.W, self.b = x, W, b

    def forward(self):
        self.value = self.x.value @ self.W.value + self.b.value

    def backward(self):
        self.x.grad += self.grad @ self.W.value.T
        self.W.grad += self.x.value.T @ self.grad
        self.b.grad += self.grad.sum(axis=0)


class AssigningAffine(SlideAffine):
    """Assigns the parameter gradients (`W.grad = W.grad + ...`) instead of adding in place."""

    def backward(self):
        self.W.grad = self.W.grad + self.x.value.T @ self.grad
        self.b.grad = self.b.grad + self.grad.sum(axis=0)


@pytest.mark.parametrize("op", [SlideAffine, AssigningAffine])
def test_slide_style_op_on_the_image_input_and_assigned_parameter_gradients(op):
    """`x.grad += ...` on an Input without a gradient is dropped, as the lecture's Input.addgrad does;
    a parameter gradient assigned instead of added still lands in the flat buffer the optimizer reads."""
    rng = np.random.default_rng(9)
    W = Parameter("W", rng.standard_normal((I, J)))
    out = op(Input("x", rng.standard_normal((B, I))), W, Parameter("b", rng.standard_normal(J)))
    loss = SoftmaxCrossEntropy(Tanh(out), Input("y", rng.integers(0, J, B)))
    graph = Graph([loss], dtype=np.float64)
    report = gradcheck(graph, loss)
    assert report.ok and [c.name for c in report.checks] == ["W", "b"], str(report)
    graph.backward(loss, 1.0)
    graph.backward(loss, 1.0)                         # twice: zeroed in between, not accumulated
    once = graph.grads.copy()
    graph.backward(loss, 1.0)
    assert np.shares_memory(W.grad, graph.grads) and np.array_equal(graph.grads, once) and once.any()
