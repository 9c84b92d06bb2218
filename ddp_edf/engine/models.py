"""The lecture's models as EDF graphs: multiclass logistic regression and MLPs; and, from the ops of conv.py
and attention.py, a small CNN and a vision transformer (images (B, C, H, W)).

Initialisation (drawn from ``numpy.random.default_rng(seed)`` in float64, layer by layer, W before
b, then cast to the graph's dtype, so one seed gives the same parameters on every machine):

* He normal for a layer followed by Relu:     W[i,j] ~ N(0, 2 / I)
* Glorot uniform for every other layer:       W[i,j] ~ U(-a, a),  a = sqrt(6 / (I + J))
* He normal for a convolution (fan-in C k k):  K[o,c,i,j] ~ N(0, 2 / (C k k))
* ViT: positions ~ N(0, 0.02^2); layer-norm gains 1;
* biases start at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import check_integer, check_option
from .attention import GELU, LayerNorm, PatchEmbedding, SelfAttention, TokenMean
from .conv import Conv2d, Flatten, MaxPool2d
from .dropout import Dropout, ExampleKeys, TrainingFlag
from .graph import Input, Node, Parameter
from .ops import Add, Affine, ErrorRate, LogLoss, Relu, Sigmoid, Softmax, SoftmaxCrossEntropy, Tanh

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid, "tanh": Tanh}
MODEL_KINDS = ("logreg", "mlp", "lecture_mlp", "cnn", "vit")
IMAGE_MODELS = ("cnn", "vit")        # these take images (C, H, W); the others a row of features


@dataclass
class Model:
    """The nodes a trainer needs: set x and y, run, read loss and errors.
    ``Graph(model.outputs)`` (or the Trainer) packs its parameters and runs it."""

    x: Input         # images (B, I), float; (B, C, H, W) for cnn and vit
    y: Input         # labels (B,), int
    scores: Node     # (B, K): argmax is the prediction
    loss: Node       # (B,) per-example loss; backward seeds it with 1/B_global
    errors: Node     # (B,) 1.0 where the prediction is wrong
    training: Input | None = None   # with dropout: the TrainingFlag and ExampleKeys a step feeds (dropout.py)
    keys: Input | None = None

    @property
    def outputs(self) -> tuple[Node, Node]:
        return self.loss, self.errors


def he_normal(rng, n_in, n_out):
    return rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)


def glorot_uniform(rng, n_in, n_out):
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def affine_layer(index, x: Node, n_in: int, n_out: int, rng, init) -> Affine:
    """fc<index>: Parameters fc<index>.W (I, J) and fc<index>.b (J,), then y = x W + b."""
    W = Parameter(f"fc{index}.W", init(rng, n_in, n_out))
    b = Parameter(f"fc{index}.b", np.zeros(n_out))
    return Affine(x, W, b, name=f"fc{index}")


def conv_layer(index: int, x: Node, c_in: int, c_out: int, rng, k: int = 3) -> Conv2d:
    """conv<index>: K (O, C, k, k) He normal, bias (O,); padding k // 2 keeps H and W."""
    K = Parameter(f"conv{index}.K", rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k)))
    return Conv2d(x, K, Parameter(f"conv{index}.b", np.zeros(c_out)), padding=k // 2, name=f"conv{index}")


def layer_norm(name: str, x: Node, width: int) -> LayerNorm:
    return LayerNorm(x, Parameter(f"{name}.gain", np.ones(width)), Parameter(f"{name}.bias", np.zeros(width)),
                     name=name)


class Dropouts:
    """Dropout layers that share the graph's two fed Inputs; the k-th has the seed SeedSequence([seed, k]), so
    its masks differ from the others' and the parameters' initialisation does not depend on p."""

    def __init__(self, p: float, seed: int):
        self.p, self.seed, self.count = p, seed, 0
        self.training, self.keys = TrainingFlag("training"), ExampleKeys("keys")

    def __call__(self, x: Node, name: str) -> Node:
        if not self.p:
            return x
        self.count += 1
        seed = int(np.random.SeedSequence([self.seed, self.count]).generate_state(1, np.uint64)[0])
        return Dropout(x, self.training, self.keys, self.p, seed, name)


def _finish(x, y, scores, loss, drop=None) -> Model:
    fed = (drop.training, drop.keys) if drop is not None and drop.count else (None, None)
    return Model(x, y, scores, loss, ErrorRate(scores, y, name="errors"), *fed)


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


def cnn(image_shape, n_classes: int, channels=(32, 64), hidden=(128,), dropout: float = 0.0, seed: int = 0) -> Model:
    """x (B, C, H, W) -> [Conv2d 3x3 -> Relu -> MaxPool2d 2] for each channel width -> Flatten
    -> [Affine -> Relu -> Dropout] for each hidden width -> Affine -> softmax cross-entropy."""
    rng = np.random.default_rng(seed)
    (C, H, W), drop = image_shape, Dropouts(dropout, seed)
    x, y = Input("x"), Input("y")
    h = x
    for index, width in enumerate(channels):
        h = MaxPool2d(Relu(conv_layer(index, h, C, width, rng), name=f"conv_act{index}"), 2, name=f"pool{index}")
        C, H, W = width, H // 2, W // 2
    h, width = Flatten(h, name="flatten"), C * H * W
    for index, n_out in enumerate(hidden):
        h = drop(Relu(affine_layer(index, h, width, n_out, rng, he_normal), name=f"act{index}"), f"drop{index}")
        width = n_out
    scores = affine_layer(len(hidden), h, width, n_classes, rng, glorot_uniform)
    return _finish(x, y, scores, SoftmaxCrossEntropy(scores, y, name="loss"), drop)


def vit(image_shape, n_classes: int, patch: int = 7, dim: int = 64, depth: int = 2, heads: int = 4,
        hidden: int = 128, dropout: float = 0.0, seed: int = 0) -> Model:
    """A vision transformer (Dosovitskiy et al. 2021), pre-norm, pooled by the mean over tokens:
    h = PatchEmbedding(x);  per block:  h = h + W_o SelfAttention(W_qkv LN(h));  h = h + W_2 GELU(W_1 LN(h));
    scores = Affine(LN(mean over tokens of h))."""
    rng = np.random.default_rng(seed)
    (C, H, W), drop = image_shape, Dropouts(dropout, seed)
    x, y = Input("x"), Input("y")
    position = Parameter("patch.position", rng.standard_normal((H * W // (patch * patch), dim)) * 0.02)
    h = PatchEmbedding(x, Parameter("patch.W", glorot_uniform(rng, C * patch * patch, dim)),
                       Parameter("patch.b", np.zeros(dim)), position, patch, name="patch")
    for k in range(depth):
        # q, k, v without a bias: softmax ignores a shift common to all keys, so a key bias has no gradient
        # (only float32 noise, which Adam would turn into full steps)
        W_qkv = Parameter(f"fc{k}.qkv.W", glorot_uniform(rng, dim, 3 * dim))
        qkv = Affine(layer_norm(f"ln{k}a", h, dim), W_qkv, name=f"fc{k}.qkv")
        attended = affine_layer(f"{k}.out", SelfAttention(qkv, heads, name=f"attention{k}"), dim, dim, rng,
                                glorot_uniform)
        h = Add(h, drop(attended, f"drop{k}a"), name=f"residual{k}a")
        mlp_hidden = GELU(affine_layer(f"{k}.mlp1", layer_norm(f"ln{k}b", h, dim), dim, hidden, rng, glorot_uniform))
        h = Add(h, drop(affine_layer(f"{k}.mlp2", mlp_hidden, hidden, dim, rng, glorot_uniform), f"drop{k}b"),
                name=f"residual{k}b")
    pooled = layer_norm("ln_final", TokenMean(h, name="pool"), dim)
    scores = affine_layer("_out", pooled, dim, n_classes, rng, glorot_uniform)
    return _finish(x, y, scores, SoftmaxCrossEntropy(scores, y, name="loss"), drop)


def _count(value, low: int, high: int = 1_000_000) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_model(kind: str, hidden, activation: str, seed: int, channels=(32, 64), patch: int = 7, dim: int = 64,
                depth: int = 2, heads: int = 4, dropout: float = 0.0, image_shape=None):
    """Refuse a model kind, widths, activation or seed build_model cannot take (OptionError naming it)."""
    check_option("build_model", "kind", kind, kind in MODEL_KINDS, f"is not one of {list(MODEL_KINDS)}")
    check_option("build_model", "hidden", hidden, all(_count(w, 1) for w in hidden),
                 "must be a list of integer widths in [1, 1000000]")
    check_option("build_model", "hidden", hidden, kind != "vit" or len(hidden) == 1,
                 "must hold one width for vit (its blocks' MLP)")
    check_option("build_model", "channels", channels, len(channels) >= 1 and all(_count(w, 1) for w in channels),
                 "must be a list of integer widths in [1, 1000000]")
    for name, value, low in (("patch", patch, 1), ("dim", dim, 1), ("depth", depth, 1), ("heads", heads, 1)):
        check_option("build_model", name, value, _count(value, low), f"must be an integer >= {low}")
    check_option("build_model", "heads", heads, dim % heads == 0, f"must divide dim = {dim}")
    check_option("build_model", "dropout", dropout, isinstance(dropout, (int, float)) and not isinstance(
        dropout, bool) and 0 <= dropout < 1, "must be in [0, 1)")
    check_option("build_model", "dropout", dropout, not dropout or kind != "cnn" or hidden,
                 "drops the cnn's hidden fc layers' units, and hidden = [] has none: give hidden widths")
    if kind in IMAGE_MODELS and image_shape is not None:
        C, H, W = image_shape
        check_option("build_model", "channels", channels, kind != "cnn" or min(H, W) >> len(channels) >= 1,
                     f"pools {H}x{W} images {len(channels)} times to nothing: give fewer channel widths")
        check_option("build_model", "patch", patch, kind != "vit" or (H % patch == 0 and W % patch == 0),
                     f"must divide the image's {H}x{W} pixels")
    check_option("build_model", "hidden", hidden, kind != "lecture_mlp" or len(hidden) == 1,
                 "must hold one width for lecture_mlp")
    check_option("build_model", "activation", activation, kind != "mlp" or activation in ACTIVATIONS,
                 f"is not one of {list(ACTIVATIONS)}")
    check_integer("build_model", "seed", seed, 0)


def image_shape_of(kind: str, n_in) -> tuple | None:
    """(C, H, W) of an image model's input, from (C, H, W) or (H, W) (one channel); None for the others."""
    shape = (int(n_in),) if np.ndim(n_in) == 0 else tuple(n_in)
    if kind not in IMAGE_MODELS:
        return None
    check_option("build_model", "n_in", n_in, len(shape) in (2, 3),
                 f"must be the images' shape (C, H, W) or (H, W) for {kind}, not a feature count")
    return shape if len(shape) == 3 else (1, *shape)


def build_model(kind: str, n_in, n_classes: int, hidden=(256,), activation: str = "relu", seed: int = 0,
                channels=(32, 64), patch: int = 7, dim: int = 64, depth: int = 2, heads: int = 4,
                dropout: float = 0.0) -> Model:
    """A model by name: 'logreg', 'mlp', 'lecture_mlp' (one hidden width), 'cnn' or 'vit' (hidden: the width of
    its blocks' MLP).  ``n_in``: the number of features, or the shape of one example (cnn, vit: (C, H, W))."""
    image_shape = image_shape_of(kind, n_in)
    check_model(kind, hidden, activation, seed, channels, patch, dim, depth, heads, dropout, image_shape)
    n_in = int(np.prod(n_in))
    if kind == "cnn":
        return cnn(image_shape, n_classes, channels, hidden, dropout, seed)
    if kind == "vit":
        return vit(image_shape, n_classes, patch, dim, depth, heads, hidden[0], dropout, seed)
    if kind == "logreg":
        return logistic_regression(n_in, n_classes, seed)
    if kind == "mlp":
        return mlp(n_in, hidden, n_classes, activation, seed)
    return lecture_mlp(n_in, hidden[0], n_classes, seed)
