"""The computation graph of the lecture: Input, Parameter, CompNode, and the Graph that runs them.

A model is a DAG of nodes.  Every node has a ``value`` and, after ``Graph.backward``, a ``grad`` of
the same shape holding d(loss)/d(value).  Backward keeps the lecture's contract: it first sets every
gradient to zero, then each op *adds* its contribution (``x.grad += ...`` or ``x.addgrad(...)``), so
a node used twice receives the sum of both, and an op written exactly as on the slides is correct.

Departures from the lecture's sketch, each for a reason: no module-level node lists (``Graph``
finds the nodes by a depth-first search over ordered tuples: the same order, and float sums, on
every run); ``Parameter.addgrad`` does not sum over the batch (each op adds a batch-summed gradient,
Affine's in one GEMM); the loss seed 1/nBatch is an argument of ``backward`` (one over the *global*
batch under data parallelism); all parameters live in one flat buffer (``Graph.params``), their
gradients in another (``Graph.grads``), so an optimizer step or an Allreduce is one array.
"""

from __future__ import annotations

import numpy as np


class ShapeError(ValueError):
    """An op received inputs whose shapes do not fit together, or gave a gradient of the wrong shape."""


class Node:
    """Anything with a value: the common base of Input, Parameter and CompNode."""

    name: str = ""
    value: np.ndarray | None = None
    grad: np.ndarray | None = None
    # Does a parameter (or a gradient-checked input) lie upstream?  Ops skip the gradient of
    # inputs that need none, e.g. the image batch x, and backward skips nodes that need none.
    needs_grad: bool = False
    inputs: tuple[Node, ...] = ()

    def addgrad(self, delta):
        """The lecture's accumulation: x.grad += (one consumer's contribution), of x's own shape."""
        if (delta.shape if isinstance(delta, np.ndarray) else np.shape(delta)) != self.grad.shape:
            raise ShapeError(f"a gradient of shape {np.shape(delta)} added to {self.describe()}")
        self.grad += delta

    def label(self) -> str:
        return f"{type(self).__name__} '{self.name}'" if self.name else type(self).__name__

    def describe(self) -> str:
        return self.label() if self.value is None else f"{self.label()} {tuple(np.shape(self.value))}"


class Input(Node):
    """A value set for each batch (images x, labels y).  As in the lecture it has no gradient: what
    ``addgrad`` or a slide-style ``x.grad += ...`` gives it is dropped.  ``requires_grad=True`` keeps
    a real one (gradient checks of an op's inputs)."""

    def __init__(self, name: str = "", value=None, requires_grad: bool = False):
        self.name, self.value, self.needs_grad, self._grad = name, value, requires_grad, None

    @property
    def grad(self):
        return self._grad if self.needs_grad or self.value is None else np.zeros(np.shape(self.value))

    @grad.setter
    def grad(self, value):
        self._grad = value

    def addgrad(self, delta):
        if self.needs_grad:
            super().addgrad(delta)


class Parameter(Node):
    """A trained array with no batch index.  Its name (``fc0.W``) is stable: checkpoints key on it.
    Once a Graph packs it, ``value`` and ``grad`` are views of the graph's flat buffers, and an op
    that assigns ``p.grad = ...`` (instead of adding) writes into that buffer all the same."""

    needs_grad = True

    def __init__(self, name: str, value):
        if not name:
            raise ValueError("a Parameter needs a name, e.g. 'fc0.W'")
        self.name, self.value, self.graph, self._grad = name, np.asarray(value), None, None

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        if self._grad is None:
            self._grad = value
        elif value is not self._grad:
            if np.shape(value) != self._grad.shape:
                raise ShapeError(f"a gradient of shape {np.shape(value)} assigned to {self.describe()}")
            self._grad[...] = value


class CompNode(Node):
    """A computed node.  Subclasses set ``self.value`` in forward() and add to their inputs'
    gradients in backward(); the graph zeroes every gradient before each backward pass."""

    def __init__(self, *inputs: Node, name: str = ""):
        self.inputs = inputs
        self.name = name
        self.needs_grad = any(node.needs_grad for node in inputs)

    def forward(self):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def shape_error(self, message: str) -> ShapeError:
        shapes = ", ".join(node.describe() for node in self.inputs)
        return ShapeError(f"{self.label()}: {message} (inputs: {shapes})")


def topological_order(outputs) -> list[Node]:
    """Every node reachable from ``outputs``, each after all of its inputs: a depth-first search over
    the ordered ``inputs`` tuples (never a set), so the order is a pure function of how the graph was built."""
    order: list[Node] = []
    visited: set[int] = set()

    def visit(node: Node):
        if id(node) in visited:
            return
        visited.add(id(node))
        for parent in node.inputs:
            visit(parent)
        order.append(node)

    for output in outputs:
        visit(output)
    return order


class Graph:
    """The nodes reachable from ``outputs``, in a fixed order, with parameters packed flat.
    ``dtype`` is float32 for training and float64 for gradient checks: the same engine either way.
    ``grad_buffer(n)``, if given, returns the flat array of n gradients to pack into (a reducer's
    buffer, which may hold more behind it); by default the graph makes its own."""

    def __init__(self, outputs, dtype=np.float32, grad_buffer=None):
        self.outputs = tuple(outputs)
        for output in self.outputs:
            if not isinstance(output, Node):
                raise TypeError(f"a Graph is built from nodes (the loss, a metric), not {output!r} "
                                f"({type(output).__name__})")
        self.dtype = np.dtype(dtype)
        self.nodes = topological_order(self.outputs)
        self.comp_nodes = [n for n in self.nodes if isinstance(n, CompNode)]
        self.parameters = [n for n in self.nodes if isinstance(n, Parameter)]
        self.inputs_with_grad = [n for n in self.nodes if isinstance(n, Input) and n.needs_grad]
        names = [p.name for p in self.parameters]
        if len(set(names)) < len(names):
            raise ValueError(f"two parameters share a name in {names}: parameter names must be unique")
        self._pack_parameters(grad_buffer or (lambda n: np.zeros(n, self.dtype)))
        self._ancestors: dict[int, list[CompNode]] = {}

    def _pack_parameters(self, grad_buffer):
        """Copy every parameter into one flat buffer and make ``p.value``/``p.grad`` views into it."""
        sizes = [p.value.size for p in self.parameters]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        self.params = np.empty(n, dtype=self.dtype)
        self.grads = grad_buffer(n)
        if self.grads.shape != (n,) or self.grads.dtype != self.dtype:
            raise ValueError(f"grad_buffer gave {self.grads.dtype} {self.grads.shape}, not {self.dtype} ({n},)")
        for p, start, stop in zip(self.parameters, self.offsets[:-1], self.offsets[1:]):
            shape = p.value.shape
            self.params[start:stop] = np.asarray(p.value, dtype=self.dtype).ravel()
            p.value, p._grad = self.params[start:stop].reshape(shape), self.grads[start:stop].reshape(shape)
            p.graph = self

    # -- parameters by name ---------------------------------------------------------------

    @property
    def num_params(self) -> int:
        return int(self.params.size)

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"no parameter named '{name}'; the graph has {[p.name for p in self.parameters]}")

    def layout(self) -> list:
        """[[name, shape], ...] in buffer order: what a checkpoint must match."""
        return [[p.name, list(p.value.shape)] for p in self.parameters]

    def structure(self) -> list:
        """[[op type, name, [positions of its inputs]], ...] in node order: what a checkpoint's graph must match
        (two graphs with the same parameters but another op, or other wiring, differ here)."""
        position = {id(node): k for k, node in enumerate(self.nodes)}
        return [[type(n).__name__, n.name, [position[id(i)] for i in n.inputs]] for n in self.nodes]

    def segments(self) -> list:
        """[(name, start, stop), ...]: where each parameter lies in the flat buffers."""
        return [(p.name, int(a), int(b)) for p, a, b in zip(self.parameters, self.offsets[:-1], self.offsets[1:])]

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, keyed by its stable name."""
        return {p.name: p.value.copy() for p in self.parameters}

    def load_state_dict(self, state, source: str = "the given parameters"):
        """Overwrite the parameters from ``{name: array}``; names and shapes must match exactly."""
        expected = {p.name: p.value.shape for p in self.parameters}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{source} do not fit this model: missing {missing or 'none'}, unexpected "
                             f"{unexpected or 'none'}; the model has {list(expected)}")
        for p in self.parameters:
            array = np.asarray(state[p.name])
            if array.shape != p.value.shape:
                raise ValueError(f"{source}: '{p.name}' has shape {array.shape} but the model needs {p.value.shape}")
            p.value[...] = array

    # -- running it -------------------------------------------------------------------------

    def forward(self):
        """The lecture's Forward(): every computed node, inputs before consumers."""
        if any(p.graph is not self for p in self.parameters):
            raise RuntimeError("a newer Graph (or Trainer) was built over these parameters and holds them now: "
                               "use that one (one Graph per model)")
        for node in self.comp_nodes:
            node.forward()

    def backward(self, loss: Node, grad_scale=1.0, accumulate: bool = False):
        """The lecture's Backward(loss): zero every gradient, seed ``loss.grad``, run backward in reverse.
        ``grad_scale`` is the seed: the lecture's 1/nBatch for a per-example loss (B,) gives the gradient
        of the batch mean (under data parallelism: 1/B_global); an array of ``loss.value``'s shape seeds a
        projection (gradient checks).  ``accumulate=True`` keeps the parameter gradients in ``grads``
        and adds to them (gradient accumulation over micro-batches)."""
        ancestors = self._ancestors_of(loss)
        if not accumulate:
            self.grads.fill(0)                      # every Parameter's grad: one fill of the flat buffer
        for node in ancestors:                      # every computed node's grad
            node.grad = np.zeros_like(node.value)
        for node in self.inputs_with_grad:
            node.grad = np.zeros_like(node.value, dtype=self.dtype)
        loss.grad[...] = grad_scale                 # loss.grad = 1/nBatch
        for node in reversed(ancestors):
            if node.needs_grad:                     # nodes with no parameter upstream have nothing to pass on
                self._run_backward(node)

    @staticmethod
    def _run_backward(node: CompNode):
        """node.backward(), then a check that it left its inputs' gradients in their shapes: a wrong one
        is blamed on this op, not on the op that meets it later."""
        try:
            node.backward()
        except ShapeError as error:
            raise ShapeError(f"{node.label()}.backward: {error}") from None
        for parent in node.inputs:
            if parent.needs_grad and np.shape(parent.grad) != parent.value.shape:
                raise ShapeError(f"{node.label()}.backward gave {parent.describe()} a gradient of shape "
                                 f"{np.shape(parent.grad)}")

    def _ancestors_of(self, loss: Node) -> list[CompNode]:
        """The computed nodes ``loss`` depends on (itself included), in forward order."""
        if id(loss) not in self._ancestors:
            if not isinstance(loss, CompNode) or loss not in self.comp_nodes:
                raise ValueError(f"{loss.describe()} is not a computed node of this graph")
            if not loss.needs_grad:
                raise ValueError(f"{loss.describe()} has no gradient (a metric, or nothing upstream is trained)")
            upstream = {id(n) for n in topological_order([loss])}
            self._ancestors[id(loss)] = [n for n in self.comp_nodes if id(n) in upstream]
        return self._ancestors[id(loss)]
