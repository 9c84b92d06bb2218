"""The computation graph of the lecture: Input, Parameter, CompNode, and the Graph that runs them.

A model is a DAG of nodes.  Every node has a ``value`` and, after ``Graph.backward``, a ``grad``
of the same shape holding d(loss)/d(value).  Backpropagation keeps the lecture's loop invariant:
gradients only ever *accumulate* (``addgrad`` adds), so a node used twice receives the sum of
both contributions.

Departures from the lecture's sketch, each for a reason:

* No module-level node lists.  ``Graph(outputs)`` finds the nodes by a depth-first search from the
  outputs over *ordered* tuples, so the order (and every float sum) is the same on every run.
* ``Parameter.addgrad`` does not sum over the batch: each op already returns a batch-summed
  gradient (Affine computes ``W.grad += x.T @ y.grad`` in one GEMM instead of building the
  lecture's (B, I, J) tensor).
* The loss seed ``1/nBatch`` is an argument of ``Graph.backward``: under data parallelism it is
  one over the *global* batch size, not over this rank's shard.
* All parameters live in one flat buffer (``Graph.params``) and all their gradients in another
  (``Graph.grads``); each ``Parameter.value``/``.grad`` is a view into it.  An optimizer step, an
  Allreduce, a checksum or a checkpoint then touches one array.
"""

from __future__ import annotations

import numpy as np


class ShapeError(ValueError):
    """An op received inputs whose shapes do not fit together."""


class Node:
    """Anything with a value: the common base of Input, Parameter and CompNode."""

    name: str = ""
    value: np.ndarray | None = None
    grad: np.ndarray | None = None
    # Does any parameter (or gradient-checked input) lie upstream?  Ops skip the
    # gradient of inputs that need none, e.g. the image batch x.
    needs_grad: bool = False
    inputs: tuple[Node, ...] = ()
    # True from the start of Graph.backward until the first contribution: .grad holds no
    # gradient yet (possibly stale values), so the first addgrad* writes instead of adding.
    _grad_is_zero: bool = True

    def addgrad(self, delta):
        # The lecture's accumulation: x.grad += (contribution of one consumer).  The first
        # contribution is copied instead, so gradients need no zeroing pass before backward.
        if self._grad_is_zero:
            np.copyto(self.grad, delta)
        else:
            self.grad += delta
        self._grad_is_zero = False

    def addgrad_matmul(self, a, b):
        """``self.addgrad(a @ b)`` without allocating the product when this is the first contribution."""
        if self._grad_is_zero:
            np.matmul(a, b, out=self.grad)
        else:
            self.grad += a @ b
        self._grad_is_zero = False

    def addgrad_product(self, a, b):
        """``self.addgrad(a * b)`` (elementwise), written in place when this is the first contribution."""
        if self._grad_is_zero:
            np.multiply(a, b, out=self.grad)
        else:
            self.grad += a * b
        self._grad_is_zero = False

    def describe(self) -> str:
        shape = None if self.value is None else tuple(np.shape(self.value))
        label = f"{type(self).__name__} '{self.name}'" if self.name else type(self).__name__
        return f"{label} {shape}" if shape is not None else label


class Input(Node):
    """A value set for each batch (images x, labels y).  It has no gradient: addgrad does nothing.

    ``requires_grad=True`` keeps a gradient anyway; gradient checks use it to test an op's
    derivative with respect to its inputs.
    """

    def __init__(self, name: str = "", value=None, requires_grad: bool = False):
        self.name = name
        self.value = value
        self.needs_grad = requires_grad

    def addgrad(self, delta):
        if self.needs_grad:
            super().addgrad(delta)

    def addgrad_matmul(self, a, b):
        if self.needs_grad:
            super().addgrad_matmul(a, b)

    def addgrad_product(self, a, b):
        if self.needs_grad:
            super().addgrad_product(a, b)


class Parameter(Node):
    """A trained array with no batch index.  Its name (``fc0.W``) is stable: checkpoints key on it."""

    needs_grad = True

    def __init__(self, name: str, value):
        if not name:
            raise ValueError("a Parameter needs a name, e.g. 'fc0.W'")
        self.name = name
        self.value = np.asarray(value)


class CompNode(Node):
    """A computed node.  Subclasses set ``self.value`` in forward() and call ``addgrad`` on
    their inputs in backward(); the graph zeroes ``self.grad`` before each backward pass."""

    def __init__(self, *inputs: Node, name: str = ""):
        self.inputs = inputs
        self.name = name
        self.needs_grad = any(node.needs_grad for node in inputs)
        self._buffers: dict[str, np.ndarray] = {}

    def forward(self):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def buffer(self, key: str, shape, dtype, fill=None) -> np.ndarray:
        """A scratch array owned by this node, reused while the shape stays the same (no per-step
        allocation).  ``fill``: the value a new array starts with (else its contents are undefined)."""
        array = self._buffers.get(key)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = np.empty(shape, dtype=dtype) if fill is None else np.full(shape, fill, dtype=dtype)
            self._buffers[key] = array
        return array

    def ones(self, n: int, dtype) -> np.ndarray:
        """A vector of n ones owned by this node (sums over an axis are GEMVs with it)."""
        return self.buffer("ones", (n,), dtype, fill=1)

    def arange(self, n: int) -> np.ndarray:
        """0, 1, ..., n - 1, owned by this node (row indices for picking one entry per row)."""
        rows = self._buffers.get("arange")
        if rows is None or len(rows) != n:
            rows = self._buffers["arange"] = np.arange(n)
        return rows

    def shape_error(self, message: str) -> ShapeError:
        shapes = ", ".join(f"{node.describe()}" for node in self.inputs)
        return ShapeError(f"{self.describe_op()}: {message} (inputs: {shapes})")

    def describe_op(self) -> str:
        return f"{type(self).__name__} '{self.name}'" if self.name else type(self).__name__


def topological_order(outputs) -> list[Node]:
    """Every node reachable from ``outputs``, each after all of its inputs.

    A depth-first search over the ordered ``inputs`` tuples (never a set), so the order is a pure
    function of how the graph was built.
    """
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
    """

    def __init__(self, outputs, dtype=np.float32):
        self.outputs = tuple(outputs)
        self.dtype = np.dtype(dtype)
        self.nodes = topological_order(self.outputs)
        self.comp_nodes = [n for n in self.nodes if isinstance(n, CompNode)]
        self.parameters = [n for n in self.nodes if isinstance(n, Parameter)]
        self.inputs_with_grad = [n for n in self.nodes if isinstance(n, Input) and n.needs_grad]
        self._check_unique_names()
        self._pack_parameters()
        self._backward_orders: dict[int, list[CompNode]] = {}

    def _check_unique_names(self):
        seen = set()
        for p in self.parameters:
            if p.name in seen:
                raise ValueError(f"two parameters are named '{p.name}': parameter names must be unique")
            seen.add(p.name)

    def _pack_parameters(self):
        """Copy every parameter into one flat buffer and make ``p.value``/``p.grad`` views into it."""
        sizes = [p.value.size for p in self.parameters]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.params = np.empty(total, dtype=self.dtype)
        self.grads = np.zeros(total, dtype=self.dtype)
        for p, start, stop in zip(self.parameters, self.offsets[:-1], self.offsets[1:]):
            shape = p.value.shape
            self.params[start:stop] = np.asarray(p.value, dtype=self.dtype).ravel()
            p.value = self.params[start:stop].reshape(shape)
            p.grad = self.grads[start:stop].reshape(shape)

    def grads_with_tail(self, extra: int, storage: np.ndarray | None = None) -> np.ndarray:
        """Move the flat gradient buffer to the front of ``storage`` (n + extra elements; new zeros
        by default), leaving ``extra`` spare slots after it.  Returns ``storage``.

        Whoever sums gradients across processes can hand in memory of its own (e.g. shared memory)
        and put values in the spare slots (flags, counts) so they travel in the same reduction.
        ``grads`` and every ``p.grad`` become views of it; build optimizers after calling this.
        """
        n = self.grads.size
        if storage is None:
            storage = np.zeros(n + extra, dtype=self.dtype)
        if storage.shape != (n + extra,) or storage.dtype != self.dtype:
            raise ValueError(f"gradient storage must be a flat {self.dtype} array of {n + extra} elements")
        self.grads_into(storage[:n])
        return storage

    def grads_into(self, storage: np.ndarray, copy_values: bool = True):
        """Keep the gradients in ``storage`` (num_params elements) from now on: ``grads`` and every
        ``p.grad`` become views of it.  ``copy_values=False`` leaves storage as it is (backward
        overwrites it anyway).  Build optimizers on the reducer's total, not on these views."""
        self.grads = self._adopt(storage, self.grads, "gradient", copy_values)
        for p, segment in self._segments(storage):
            p.grad = segment

    def params_into(self, storage: np.ndarray, copy_values: bool = True):
        """Keep the parameters in ``storage`` (a flat array of num_params elements, e.g. memory shared
        with other processes) from now on: ``params`` and every ``p.value`` become views of it.
        ``copy_values=False`` leaves storage as it is (another process fills it).  Build optimizers after."""
        self.params = self._adopt(storage, self.params, "parameter", copy_values)
        for p, segment in self._segments(storage):
            p.value = segment

    def views(self):
        """The flat buffers in use and every parameter's views into them, for ``restore_views``: a
        caller that switches among a few buffers (a ring) keeps these instead of slicing again."""
        return self.params, self.grads, tuple((p, p.value, p.grad) for p in self.parameters)

    def restore_views(self, views):
        """Use again the buffers and views that ``views()`` returned."""
        self.params, self.grads, parameters = views
        for p, value, grad in parameters:
            p.value, p.grad = value, grad

    def _adopt(self, storage: np.ndarray, current: np.ndarray, what: str, copy_values: bool) -> np.ndarray:
        """``storage`` checked to replace the flat array ``current`` (and filled from it if asked)."""
        if storage.shape != current.shape or storage.dtype != self.dtype:
            raise ValueError(f"{what} storage must be a flat {self.dtype} array of {current.size} elements")
        if copy_values:
            storage[...] = current
        return storage

    def _segments(self, flat: np.ndarray):
        """(parameter, its segment of ``flat`` shaped like it), for every parameter."""
        return ((p, flat[start:stop].reshape(p.value.shape))
                for p, start, stop in zip(self.parameters, self.offsets[:-1], self.offsets[1:]))

    # -- parameters by name ---------------------------------------------------------------

    @property
    def num_params(self) -> int:
        return int(self.params.size)

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"no parameter named '{name}'; the graph has {[p.name for p in self.parameters]}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, keyed by its stable name."""
        return {p.name: p.value.copy() for p in self.parameters}

    def load_state_dict(self, state, source: str = "the given parameters"):
        """Overwrite the parameters from ``{name: array}``; names and shapes must match exactly."""
        expected = {p.name: p.value.shape for p in self.parameters}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{source} do not fit this model: missing {missing or 'none'}, unexpected {unexpected or 'none'}; "
                f"the model has {list(expected)}")
        for p in self.parameters:
            array = np.asarray(state[p.name])
            if array.shape != p.value.shape:
                raise ValueError(f"{source}: '{p.name}' has shape {array.shape} but the model needs {p.value.shape}")
            p.value[...] = array

    # -- running it -------------------------------------------------------------------------

    def forward(self):
        """The lecture's Forward(): every computed node, inputs before consumers."""
        for node in self.comp_nodes:
            node.forward()

    def backward(self, loss: Node, grad_scale=1.0, accumulate: bool = False):
        """The lecture's Backward(loss): zero every gradient, seed ``loss.grad``, run backward in reverse.

        ``grad_scale`` is the seed: the lecture's 1/nBatch for a per-example loss of shape (B,)
        gives the gradient of the batch mean.  Under data parallelism pass 1/B_global.  It may
        also be an array of ``loss.value``'s shape (gradient checks seed a random projection).
        ``accumulate=True`` keeps the parameter gradients already in ``grads`` and adds to them
        (gradient accumulation over micro-batches).
        """
        order = self._backward_order(loss)
        for p in self.parameters:
            p._grad_is_zero = not accumulate    # accumulate: keep what is in grads, add to it
        for node in order:
            node.grad = node.buffer("grad", np.shape(node.value), node.value.dtype)
            node._grad_is_zero = True
        for node in self.inputs_with_grad:
            node.grad = np.zeros_like(node.value, dtype=self.dtype)
            node._grad_is_zero = True
        loss.grad[...] = grad_scale
        loss._grad_is_zero = False
        for node in reversed(order):
            if node._grad_is_zero:              # no consumer contributed: its gradient is 0
                node.grad.fill(0)
                node._grad_is_zero = False
            node.backward()
        for p in self.parameters:
            if p._grad_is_zero:                 # not reached by this loss: d(loss)/dp = 0
                p.grad.fill(0)
                p._grad_is_zero = False

    def _backward_order(self, loss: Node) -> list[CompNode]:
        """The computed nodes that lie on a path from a parameter to ``loss`` (others need no backward)."""
        if id(loss) not in self._backward_orders:
            if not isinstance(loss, CompNode) or loss not in self.comp_nodes:
                raise ValueError(f"{loss.describe()} is not a computed node of this graph")
            if not loss.needs_grad:
                raise ValueError(f"{loss.describe()} has no gradient (a metric, or nothing upstream is trained)")
            ancestors = {id(n) for n in topological_order([loss])}
            self._backward_orders[id(loss)] = [
                n for n in self.comp_nodes if id(n) in ancestors and n.needs_grad]
        return self._backward_orders[id(loss)]
