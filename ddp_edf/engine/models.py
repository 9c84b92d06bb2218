"""The lecture's models as EDF graphs: multiclass logistic regression and MLPs.

Initialisation (drawn from ``numpy.random.default_rng(seed)`` in float64, layer by layer, W before
b, then cast to the graph's dtype, so one seed gives the same parameters on every machine):

* He normal for a layer followed by Relu:     W[i,j] ~ N(0, 2 / I)
* Glorot uniform for every other layer:       W[i,j] ~ U(-a, a),  a = sqrt(6 / (I + J))
* biases start at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import check_integer, check_option
from .graph import Input, Node, Parameter
from .ops import Affine, ErrorRate, LogLoss, Relu, Sigmoid, Softmax, SoftmaxCrossEntropy, Tanh

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh}
MODEL_KINDS = ("logreg", "mlp", "lecture_mlp")


@dataclass
class Model:
    """The nodes a trainer needs: set x and y, run, read loss and errors.
    ``Graph(model.outputs)`` (or the Trainer) packs its parameters and runs it."""

    x: Input         # images (B, I), float
    y: Input         # labels (B,), int
    scores: Node     # (B, K): argmax is the prediction
    loss: Node       # (B,) per-example loss; backward seeds it with 1/B_global
    errors: Node     # (B,) 1.0 where the prediction is wrong

    @property
    def outputs(self) -> tuple[Node, Node]:
        return self.loss, self.errors


def he_normal(rng, n_in, n_out):
    return rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)


def glorot_uniform(rng, n_in, n_out):
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def affine_layer(index: int, x: Node, n_in: int, n_out: int, rng, init) -> Affine:
    """fc<index>: Parameters fc<index>.W (I, J) and fc<index>.b (J,), then y = x W + b."""
    W = Parameter(f"fc{index}.W", init(rng, n_in, n_out))
    b = Parameter(f"fc{index}.b", np.zeros(n_out))
    return Affine(x, W, b, name=f"fc{index}")


def _finish(x, y, scores, loss) -> Model:
    return Model(x, y, scores, loss, ErrorRate(scores, y, name="errors"))


def logistic_regression(n_in: int, n_classes: int, seed: int = 0) -> Model:
    """The lecture's multiclass logistic regression: s = x W + b, loss = -log softmax(s)[y]."""
    rng = np.random.default_rng(seed)
    x, y = Input("x"), Input("y")
    scores = affine_layer(0, x, n_in, n_classes, rng, glorot_uniform)
    loss = SoftmaxCrossEntropy(scores, y, name="loss")
    return _finish(x, y, scores, loss)


def mlp(n_in: int, hidden, n_classes: int, activation: str = "relu", seed: int = 0) -> Model:
    """x -> [Affine -> activation] for each hidden width -> Affine -> softmax cross-entropy."""
    check_option("mlp", "activation", activation, activation in ACTIVATIONS, f"is not one of {list(ACTIVATIONS)}")
    rng = np.random.default_rng(seed)
    init = he_normal if activation == "relu" else glorot_uniform
    x, y = Input("x"), Input("y")
    h, width = x, n_in
    for index, n_out in enumerate(hidden):
        h = ACTIVATIONS[activation](affine_layer(index, h, width, n_out, rng, init), name=f"act{index}")
        width = n_out
    scores = affine_layer(len(hidden), h, width, n_classes, rng, glorot_uniform)
    loss = SoftmaxCrossEntropy(scores, y, name="loss")
    return _finish(x, y, scores, loss)


def lecture_mlp(n_in: int, n_hidden: int, n_classes: int, seed: int = 0) -> Model:
    """The lecture's exact MLP: L1 = Relu(Affine(x)); Q = Softmax(Sigmoid(Affine(L1))); LogLoss(Q, y).

    The Sigmoid squeezes the scores into (0, 1), so Q can never be confident: it trains, slowly.
    """
    rng = np.random.default_rng(seed)
    x, y = Input("x"), Input("y")
    L1 = Relu(affine_layer(0, x, n_in, n_hidden, rng, he_normal), name="act0")
    L2 = Sigmoid(affine_layer(1, L1, n_hidden, n_classes, rng, glorot_uniform), name="act1")
    Q = Softmax(L2, name="Q")
    loss = LogLoss(Q, y, name="loss")
    return _finish(x, y, Q, loss)


def check_model(kind: str, hidden, activation: str, seed: int):
    """Refuse a model kind, widths, activation or seed build_model cannot take (OptionError naming it)."""
    check_option("build_model", "kind", kind, kind in MODEL_KINDS, f"is not one of {list(MODEL_KINDS)}")
    check_option("build_model", "hidden", hidden, all(isinstance(w, int) and not isinstance(w, bool) and
                                                      1 <= w <= 1_000_000 for w in hidden),
                 "must be a list of integer widths in [1, 1000000]")
    check_option("build_model", "hidden", hidden, kind != "lecture_mlp" or len(hidden) == 1,
                 "must hold one width for lecture_mlp")
    check_option("build_model", "activation", activation, kind != "mlp" or activation in ACTIVATIONS,
                 f"is not one of {list(ACTIVATIONS)}")
    check_integer("build_model", "seed", seed, 0)


def build_model(kind: str, n_in: int, n_classes: int, hidden=(256,), activation: str = "relu",
                seed: int = 0) -> Model:
    """A model by name: 'logreg', 'mlp' or 'lecture_mlp' (one hidden width); logreg ignores ``hidden``."""
    check_model(kind, hidden, activation, seed)
    if kind == "logreg":
        return logistic_regression(n_in, n_classes, seed)
    if kind == "mlp":
        return mlp(n_in, hidden, n_classes, activation, seed)
    return lecture_mlp(n_in, hidden[0], n_classes, seed)
