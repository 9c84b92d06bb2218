"""Check an op's backward() against float64 central differences.

For an output node u and a fixed random array R of u's shape, take the scalar f = sum(u * R).
backward() seeded with R gives df/dv for every parameter (and every ``Input(requires_grad=True)``)
v; central differences give it independently:

    df/dv[idx] ~ (f(v + eps e_idx) - f(v - eps e_idx)) / (2 eps)          error O(eps^2)

Use it on your own op::

    x = Input("x", rng.standard_normal((4, 3)), requires_grad=True)
    u = MyOp(x)
    report = gradcheck(Graph([u], dtype=np.float64), u)
    print(report)            # one line per input and parameter
    assert report.ok
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph, Input, Node, Parameter


@dataclass
class TensorCheck:
    """The comparison for one input or parameter."""

    name: str
    rel_error: float        # ||analytic - numeric|| / max(||analytic||, ||numeric||)
    max_abs_error: float    # worst single entry
    worst_index: tuple      # where that entry is
    entries: int            # how many entries were perturbed


@dataclass
class GradcheckReport:
    checks: list[TensorCheck] = field(default_factory=list)
    tolerance: float = 1e-6

    @property
    def worst(self) -> float:
        return max((c.rel_error for c in self.checks), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and self.worst <= self.tolerance

    def __str__(self) -> str:
        lines = [f"gradcheck: {'PASS' if self.ok else 'FAIL'} (worst relative error {self.worst:.2e}, "
                 f"tolerance {self.tolerance:.0e})"]
        for c in self.checks:
            lines.append(f"  {c.name:<16} rel {c.rel_error:.2e}  max abs {c.max_abs_error:.2e} "
                         f"at {c.worst_index}  ({c.entries} entries)")
        return "\n".join(lines)


def _name(node: Node, position: int) -> str:
    return node.name or f"{type(node).__name__}#{position}"


def gradcheck(graph: Graph, output: Node, wrt=None, eps: float = 1e-6, tolerance: float = 1e-6,
              max_entries: int | None = None, seed: int = 0) -> GradcheckReport:
    """Compare backward() with central differences for every node in ``wrt``.

    ``wrt`` defaults to every Parameter and every Input with requires_grad.  ``max_entries``
    perturbs only that many randomly chosen entries of each tensor (for large parameters).
    """
    if graph.dtype != np.float64:
        raise TypeError(f"gradcheck needs a float64 graph (got {graph.dtype}): build it with dtype=np.float64")
    if wrt is None:
        wrt = [n for n in graph.nodes if isinstance(n, Parameter) or (isinstance(n, Input) and n.needs_grad)]
    for node in wrt:
        if np.asarray(node.value).dtype != np.float64:
            raise TypeError(f"{node.describe()} is {np.asarray(node.value).dtype}; gradcheck needs float64 values")
    rng = np.random.default_rng(seed)

    graph.forward()
    projection = rng.standard_normal(np.shape(output.value))

    def objective() -> float:
        graph.forward()
        return float(np.sum(output.value * projection))

    graph.backward(output, projection)
    analytic = {id(n): np.array(n.grad, dtype=np.float64, copy=True) for n in wrt}

    report = GradcheckReport(tolerance=tolerance)
    for position, node in enumerate(wrt):
        value = node.value
        indices = list(np.ndindex(value.shape))
        if max_entries is not None and len(indices) > max_entries:
            chosen = rng.choice(len(indices), size=max_entries, replace=False)
            indices = [indices[i] for i in sorted(chosen)]
        numeric = central_differences(objective, value, indices, eps)
        exact = np.array([analytic[id(node)][idx] for idx in indices])
        diff = np.abs(exact - numeric)
        scale = max(np.linalg.norm(exact), np.linalg.norm(numeric))
        rel = float(np.linalg.norm(diff) / scale) if scale > 0 else 0.0
        worst = int(np.argmax(diff)) if diff.size else 0
        report.checks.append(TensorCheck(_name(node, position), rel, float(diff.max(initial=0.0)),
                                         indices[worst] if indices else (), len(indices)))
    graph.forward()
    return report


def central_differences(objective, value: np.ndarray, indices, eps: float) -> np.ndarray:
    """(f(v + eps e_idx) - f(v - eps e_idx)) / (2 eps) for each idx, ``value`` restored after each."""
    numeric = np.empty(len(indices))
    for k, idx in enumerate(indices):
        saved = value[idx]
        value[idx] = saved + eps
        f_plus = objective()
        value[idx] = saved - eps
        f_minus = objective()
        value[idx] = saved
        numeric[k] = (f_plus - f_minus) / (2 * eps)
    return numeric
