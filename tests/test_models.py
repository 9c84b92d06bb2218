"""The lecture's models: names, shapes, initialisation, and their gradients."""

import numpy as np
import pytest

from ddp_edf import Adam, ExampleKeys, Graph, TrainingFlag, build_model, gradcheck


def random_batch(model, rng, batch, n_in, n_classes):
    model.x.value = rng.uniform(0.1, 1.0, (batch, n_in))
    model.y.value = rng.integers(0, n_classes, batch)


@pytest.mark.parametrize("kind,hidden,activation", [
    ("logreg", [], "relu"),
    ("mlp", [6, 5], "relu"),
    ("mlp", [6], "sigmoid"),
    ("mlp", [6, 4], "tanh"),
    ("lecture_mlp", [6], "relu"),
])
def test_model_gradients_match_central_differences(kind, hidden, activation):
    model = build_model(kind, 8, 4, hidden=hidden, activation=activation, seed=3)
    random_batch(model, np.random.default_rng(0), 5, 8, 4)
    report = gradcheck(Graph(model.outputs, dtype=np.float64), model.loss)
    assert report.ok, str(report)


def test_parameter_names_and_shapes():
    mlp = Graph(build_model("mlp", 784, 10, hidden=[256, 128]).outputs)
    assert [(p.name, p.value.shape) for p in mlp.parameters] == [
        ("fc0.W", (784, 256)), ("fc0.b", (256,)), ("fc1.W", (256, 128)), ("fc1.b", (128,)),
        ("fc2.W", (128, 10)), ("fc2.b", (10,))]
    logreg = Graph(build_model("logreg", 784, 10).outputs)
    assert [(p.name, p.value.shape) for p in logreg.parameters] == [("fc0.W", (784, 10)), ("fc0.b", (10,))]
    assert mlp.params.dtype == np.float32


def test_same_seed_same_parameters_other_seed_different():
    a, b, c = (Graph(build_model("mlp", 50, 10, hidden=[30], seed=s).outputs).params for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_initialisation_scales():
    """He: std sqrt(2 / I) before Relu; Glorot uniform: |W| <= sqrt(6 / (I + J)); biases 0."""
    relu = Graph(build_model("mlp", 784, 10, hidden=[256], activation="relu", seed=0).outputs)
    W0 = relu.parameter("fc0.W").value
    assert abs(W0.std() / np.sqrt(2 / 784) - 1) < 0.02
    W1 = relu.parameter("fc1.W").value
    limit = np.sqrt(6 / (256 + 10))
    assert np.abs(W1).max() <= limit and np.abs(W1).max() > 0.95 * limit
    assert not relu.parameter("fc0.b").value.any()
    tanh = Graph(build_model("mlp", 784, 10, hidden=[256], activation="tanh", seed=0).outputs)
    assert np.abs(tanh.parameter("fc0.W").value).max() <= np.sqrt(6 / (784 + 256))


def test_unknown_kind_and_activation_are_errors():
    with pytest.raises(ValueError, match="build_model: kind = 'rnn' is not one of"):
        build_model("rnn", 4, 2)
    with pytest.raises(ValueError, match="activation = 'gelu' is not one of"):
        build_model("mlp", 4, 2, activation="gelu")
    with pytest.raises(ValueError, match="hidden = .* must hold one width for lecture_mlp"):
        build_model("lecture_mlp", 4, 2, hidden=[3, 3])


def test_mlp_learns_a_separable_problem():
    """Training end to end in float32: loss falls and error reaches 0 on a linearly separable set."""
    from ddp_edf import SGD
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = build_model("mlp", 5, 2, hidden=[16], seed=0)
    model.x.value, model.y.value = x, y
    graph = Graph(model.outputs)
    optimizer = SGD(lr=0.1, momentum=0.9)
    graph.forward()
    first_loss = model.loss.value.mean()
    for _ in range(200):
        graph.forward()
        graph.backward(model.loss, 1 / 64)
        optimizer.step(graph.params, graph.grads)
    graph.forward()
    assert model.loss.value.mean() < 0.2 * first_loss
    assert model.errors.value.mean() <= 1 / 64


def images_batch(model, rng, batch, shape, n_classes, step=0):
    """x, y, and the two Inputs a step feeds (training, example keys), as DataParallel would."""
    model.x.value = rng.uniform(0.0, 1.0, (batch, *shape))
    model.y.value = rng.integers(0, n_classes, batch)
    for node in Graph(model.outputs).nodes:
        if isinstance(node, TrainingFlag):
            node.value = np.array(True)
        if isinstance(node, ExampleKeys):
            node.value = np.stack([np.full(batch, step), np.arange(batch)], 1).astype(np.uint64)


@pytest.mark.parametrize("kind,options", [
    ("cnn", {"channels": [3, 4], "hidden": [5], "dropout": 0.3}),
    ("cnn", {"channels": [2], "hidden": [], "dropout": 0.0}),
    ("vit", {"patch": 2, "dim": 8, "depth": 2, "heads": 2, "hidden": [6], "dropout": 0.2}),
])
def test_image_model_gradients_match_central_differences(kind, options):
    model = build_model(kind, (1, 4, 4), 3, seed=2, **options)
    images_batch(model, np.random.default_rng(0), 3, (1, 4, 4), 3)
    report = gradcheck(Graph(model.outputs, dtype=np.float64), model.loss)
    assert report.ok, str(report)


def test_image_models_names_shapes_and_he_initialisation_of_convolutions():
    cnn = Graph(build_model("cnn", (1, 28, 28), 10, channels=[32, 64], hidden=[128], seed=0).outputs)
    assert [(p.name, p.value.shape) for p in cnn.parameters] == [
        ("conv0.K", (32, 1, 3, 3)), ("conv0.b", (32,)), ("conv1.K", (64, 32, 3, 3)), ("conv1.b", (64,)),
        ("fc0.W", (64 * 7 * 7, 128)), ("fc0.b", (128,)), ("fc1.W", (128, 10)), ("fc1.b", (10,))]
    assert abs(cnn.parameter("conv1.K").value.std() / np.sqrt(2 / (32 * 9)) - 1) < 0.03
    vit = Graph(build_model("vit", (28, 28), 10, patch=7, dim=16, depth=1, heads=2, hidden=[32]).outputs)
    assert vit.parameter("patch.position").value.shape == (16, 16)
    assert vit.parameter("fc0.qkv.W").value.shape == (16, 48)


@pytest.mark.parametrize("kind,n_in,options,message", [
    ("cnn", 784, {}, "n_in = 784 must be the images' shape"),
    ("cnn", (1, 8, 8), {"channels": [4, 4, 4, 4]}, "pools 8x8 images 4 times to nothing"),
    ("vit", (1, 28, 28), {"patch": 5}, "patch = 5 must divide the image's 28x28 pixels"),
    ("vit", (1, 28, 28), {"dim": 10, "heads": 4}, "heads = 4 must divide dim = 10"),
    ("vit", (1, 28, 28), {"hidden": [8, 8]}, "must hold one width for vit"),
    ("cnn", (1, 28, 28), {"dropout": 1.0}, r"dropout = 1.0 must be in \[0, 1\)"),
])
def test_image_model_options_that_cannot_work_are_refused(kind, n_in, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(kind, n_in, 10, **options)


@pytest.mark.parametrize("kind,options", [("cnn", {"channels": [8], "hidden": [16]}),
                                          ("vit", {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "hidden": [16]})])
def test_image_models_learn_a_tiny_problem(kind, options):
    """Two classes told apart by where the bright pixels are: the loss falls well below its start."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 64)
    x = rng.uniform(0, 0.2, (64, 1, 8, 8))
    x[y == 0, :, :4] += 0.8
    x[y == 1, :, 4:] += 0.8
    model = build_model(kind, (1, 8, 8), 2, seed=1, **options)
    graph = Graph(model.outputs)
    model.x.value, model.y.value = x.astype(np.float32), y
    optimizer = Adam(lr=0.01)
    graph.forward()
    first = model.loss.value.mean()
    for _ in range(40):
        graph.forward()
        graph.backward(model.loss, 1 / 64)
        optimizer.step(graph.params, graph.grads)
    graph.forward()
    assert model.loss.value.mean() < 0.1 * first and model.errors.value.mean() == 0
