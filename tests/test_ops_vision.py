"""The ops beyond the MLP (conv.py, attention.py, dropout.py): float64 gradient checks, forward values
against plain loops written from the index equations, and the properties dropout promises."""

import numpy as np
import pytest

from ddp_edf import (AvgPool2d, Conv2d, Dropout, ExampleKeys, Flatten, GELU, Graph, Input, LayerNorm, MaxPool2d,
                     Parameter, PatchEmbedding, Reshape, SelfAttention, TokenMean, TrainingFlag, gradcheck)


def tensor(rng, *shape, name="x"):
    return Input(name, rng.standard_normal(shape), requires_grad=True)


def param(rng, name, *shape):
    return Parameter(name, rng.standard_normal(shape))


def conv(stride, padding):
    return lambda rng: Conv2d(tensor(rng, 2, 3, 7, 6), param(rng, "K", 4, 3, 3, 3), param(rng, "b", 4), stride, padding)


def dropout_graph(rng):
    keys = ExampleKeys("keys", np.array([[3, 7], [3, 9]], np.uint64))
    return Dropout(tensor(rng, 2, 3, 4), TrainingFlag("training", np.array(True)), keys, p=0.5, seed=1)


OP_GRAPHS = {
    "Conv2d stride 1": conv(1, 0),
    "Conv2d stride 1 padding 1": conv(1, 1),
    "Conv2d stride 2 padding 1": conv(2, 1),
    "Conv2d 1x1": lambda rng: Conv2d(tensor(rng, 2, 3, 4, 4), param(rng, "K", 5, 3, 1, 1), param(rng, "b", 5)),
    "MaxPool2d 2": lambda rng: MaxPool2d(tensor(rng, 2, 3, 6, 7), 2),
    "MaxPool2d 3 stride 2 (overlapping)": lambda rng: MaxPool2d(tensor(rng, 2, 3, 7, 7), 3, 2),
    "AvgPool2d 2": lambda rng: AvgPool2d(tensor(rng, 2, 3, 6, 6), 2),
    "AvgPool2d 3 stride 2 (overlapping)": lambda rng: AvgPool2d(tensor(rng, 2, 3, 7, 7), 3, 2),
    "Flatten": lambda rng: Flatten(tensor(rng, 2, 3, 4, 4)),
    "Reshape": lambda rng: Reshape(tensor(rng, 2, 12), (3, 2, 2)),
    "LayerNorm": lambda rng: LayerNorm(tensor(rng, 3, 4, 5), param(rng, "gain", 5), param(rng, "bias", 5)),
    "GELU": lambda rng: GELU(tensor(rng, 3, 4, 5)),
    "SelfAttention 2 heads": lambda rng: SelfAttention(tensor(rng, 2, 5, 12), heads=2),
    "PatchEmbedding": lambda rng: PatchEmbedding(tensor(rng, 2, 3, 4, 6), param(rng, "W", 12, 5), param(rng, "b", 5),
                                                 param(rng, "position", 6, 5), patch=2),
    "TokenMean": lambda rng: TokenMean(tensor(rng, 2, 4, 5)),
    "Dropout (training)": dropout_graph,
}


@pytest.mark.parametrize("name", sorted(OP_GRAPHS))
def test_backward_matches_central_differences(name):
    output = OP_GRAPHS[name](np.random.default_rng(42))
    graph = Graph([output], dtype=np.float64)
    report = gradcheck(graph, output)
    assert report.ok, str(report)
    wanted = [n.name for n in graph.nodes if isinstance(n, Parameter) or (isinstance(n, Input) and n.needs_grad)]
    assert [c.name for c in report.checks] == wanted


class ConvMissingOverlaps(Conv2d):
    """A wrong backward: adds back only the window's first offset (the overlapping patches are lost)."""

    def backward(self):
        saved = self.x
        self.x = Input("unused", self.x.value)        # the parent gets its gradient below, from one offset only
        super().backward()
        self.x = saved
        g = self.grad.transpose(0, 2, 3, 1).reshape(-1, len(self.K.value))
        dcols = (g @ self.K.value.transpose(0, 2, 3, 1).reshape(len(self.K.value), -1))
        B, C, H, W = self.x.value.shape
        first = dcols.reshape(B, self.P, self.Q, -1, C)[:, :, :, 0].transpose(0, 3, 1, 2)
        dx = np.zeros_like(self.x.value)
        dx[:, :, :self.P, :self.Q] += first
        self.x.addgrad(dx)


class AttentionWithoutSoftmaxBackward(SelfAttention):
    """A wrong backward: treats the attention weights A as constants."""

    def backward(self):
        B, T, D3 = self.qkv.value.shape
        dy = self.grad.reshape(B, T, self.heads, -1).transpose(0, 2, 1, 3)
        dv = self.A.transpose(0, 1, 3, 2) @ dy
        zeros = np.zeros_like(dv)
        self.qkv.addgrad(np.stack([zeros, zeros, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, D3))


@pytest.mark.parametrize("bad", [
    lambda rng: ConvMissingOverlaps(tensor(rng, 2, 2, 5, 5), param(rng, "K", 3, 2, 3, 3), param(rng, "b", 3)),
    lambda rng: AttentionWithoutSoftmaxBackward(tensor(rng, 2, 4, 6), heads=1),
])
def test_a_wrong_backward_fails_the_check(bad):
    output = bad(np.random.default_rng(0))
    report = gradcheck(Graph([output], dtype=np.float64), output)
    assert not report.ok and report.worst > 1e-3


def run(output):
    Graph([output], dtype=np.float64).forward()
    return output.value


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1), (3, 2)])
def test_conv2d_equals_the_sum_over_channels_and_offsets(stride, padding):
    rng = np.random.default_rng(1)
    x, K, b = rng.standard_normal((2, 3, 7, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    y = run(Conv2d(Input("x", x), Parameter("K", K), Parameter("b", b), stride, padding))
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    P, Q = (xp.shape[2] - 3) // stride + 1, (xp.shape[3] - 3) // stride + 1
    expected = np.zeros((2, 4, P, Q))
    for p in range(P):                 # y[b,o,p,q] = x_pad[b,c,s p + i,s q + j] K[o,c,i,j] + bias[o]
        for q in range(Q):
            window = xp[:, :, stride * p:stride * p + 3, stride * q:stride * q + 3]
            expected[:, :, p, q] = np.einsum("bcij,ocij->bo", window, K) + b
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_pools_take_the_max_and_mean_of_each_window_and_a_tie_goes_to_the_first():
    x = np.arange(2 * 1 * 4 * 6, dtype=np.float64).reshape(2, 1, 4, 6) % 7
    blocks = x.reshape(2, 1, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 1, 2, 3, 4)
    np.testing.assert_array_equal(run(MaxPool2d(Input("x", x), 2)), blocks.max(axis=4))
    np.testing.assert_allclose(run(AvgPool2d(Input("x", x), 2)), blocks.mean(axis=4))
    tie = Input("x", np.ones((1, 1, 2, 2)), requires_grad=True)
    pool = MaxPool2d(tie, 2)
    graph = Graph([pool], dtype=np.float64)
    graph.forward()
    graph.backward(pool, np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(tie.grad[0, 0], [[1, 0], [0, 0]])


def test_layer_norm_gives_zero_mean_unit_variance_then_gain_and_bias():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 16)) * 5 + 2
    y = run(LayerNorm(Input("x", x), Parameter("g", np.ones(16)), Parameter("b", np.zeros(16)), eps=0.0))
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-12)
    shifted = run(LayerNorm(Input("x", x), Parameter("g", np.full(16, 3.0)), Parameter("b", np.full(16, -1.0)), eps=0.0))
    np.testing.assert_allclose(shifted, 3 * y - 1, rtol=1e-12, atol=1e-12)


def test_gelu_is_close_to_x_times_the_normal_cdf():
    from math import erf
    x = np.linspace(-5, 5, 101)
    exact = np.array([v * 0.5 * (1 + erf(v / np.sqrt(2))) for v in x])
    np.testing.assert_allclose(run(GELU(Input("x", x))), exact, atol=2e-3)


def test_self_attention_equals_a_loop_over_heads_and_queries():
    rng = np.random.default_rng(3)
    B, T, heads, E = 2, 5, 3, 4
    qkv = rng.standard_normal((B, T, 3 * heads * E))
    y = run(SelfAttention(Input("qkv", qkv), heads))
    q, k, v = (qkv[:, :, n * heads * E:(n + 1) * heads * E] for n in range(3))
    for b in range(B):
        for h in range(heads):
            cut = slice(h * E, (h + 1) * E)
            for t in range(T):
                scores = np.array([q[b, t, cut] @ k[b, u, cut] for u in range(T)]) / np.sqrt(E)
                weights = np.exp(scores) / np.exp(scores).sum()
                np.testing.assert_allclose(y[b, t, cut], weights @ v[b, :, cut], rtol=1e-12, atol=1e-12)


def test_patch_embedding_maps_each_patch_in_reading_order():
    rng = np.random.default_rng(4)
    x, W, b, pos = rng.standard_normal((2, 3, 4, 6)), rng.standard_normal((12, 5)), rng.standard_normal(5), \
        rng.standard_normal((6, 5))
    y = run(PatchEmbedding(Input("x", x), Parameter("W", W), Parameter("b", b), Parameter("pos", pos), patch=2))
    for t, (P, Q) in enumerate(np.ndindex(2, 3)):
        patch = x[:, :, 2 * P:2 * P + 2, 2 * Q:2 * Q + 2].reshape(2, -1)      # f = (c, i, j)
        np.testing.assert_allclose(y[:, t], patch @ W + b + pos[t], rtol=1e-12)
    np.testing.assert_allclose(run(TokenMean(Input("y", y))), y.mean(axis=1))


def dropped(x, keys, p=0.5, seed=3, training=True):
    op = Dropout(Input("x", x), TrainingFlag("t", np.array(training)), ExampleKeys("k", keys), p=p, seed=seed)
    op.forward()
    return op.value


def test_dropout_mask_is_a_function_of_seed_step_and_example_only():
    x = np.ones((6, 3, 4, 4), np.float32)
    keys = np.array([[5, n] for n in (10, 11, 12, 13, 14, 15)], np.uint64)
    whole = dropped(x, keys)
    # the same examples in other batches, shards and orders (W ranks, other batch compositions)
    for rows in ([0, 1, 2], [3, 4, 5], [5, 1], [4]):
        np.testing.assert_array_equal(dropped(x[rows], keys[rows]), whole[rows])
    assert not np.array_equal(dropped(x, keys + np.array([1, 0], np.uint64)), whole)    # another step
    assert not np.array_equal(dropped(x, keys, seed=4), whole)                         # another seed
    assert not np.array_equal(whole[0], whole[1])                                      # another example
    assert set(np.unique(whole)) == {0.0, 2.0}                                          # kept units scaled by 1/(1-p)


def test_dropout_keeps_a_fraction_1_minus_p_and_is_the_identity_while_evaluating():
    x = np.ones((200, 500))
    keys = np.stack([np.full(200, 7), np.arange(200)], axis=1).astype(np.uint64)
    for p in (0.1, 0.5, 0.9):
        kept = (dropped(x, keys, p=p) != 0).mean()
        assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size), (p, kept)
        assert abs(dropped(x, keys, p=p).mean() - 1) < 0.02                   # E[y] = x
    assert dropped(x, keys, training=False) is x
    with pytest.raises(ValueError, match=r"p = 1 must be in \[0, 1\)"):
        dropped(x, keys, p=1)


def test_shape_errors_name_the_op_and_what_it_needs():
    from ddp_edf import ShapeError
    with pytest.raises(ShapeError, match=r"Conv2d 'c': needs x \(B, C, H, W\), K \(O, C, k, k\)"):
        run(Conv2d(Input("x", np.zeros((2, 4, 5, 5))), Parameter("K", np.zeros((3, 2, 3, 3))),
                   Parameter("b", np.zeros(3)), name="c"))
    with pytest.raises(ShapeError, match="multiples of patch = 3"):
        run(PatchEmbedding(Input("x", np.zeros((1, 1, 4, 4))), Parameter("W", np.zeros((9, 2))),
                           Parameter("b", np.zeros(2)), Parameter("p", np.zeros((1, 2))), patch=3))
    with pytest.raises(ShapeError, match="D a multiple of heads = 4"):
        run(SelfAttention(Input("qkv", np.zeros((1, 3, 18))), heads=4))
    with pytest.raises(ShapeError, match=r"cannot lay 12 values per example out as \(5,\)"):
        run(Reshape(Input("x", np.zeros((2, 12))), (5,)))


def test_a_chain_on_the_channels_last_layout_a_convolution_leaves_passes_the_gradient_check():
    """Conv2d returns a channels-last view; strided convolutions and overlapping pools on it."""
    rng = np.random.default_rng(7)
    x = tensor(rng, 2, 2, 9, 9)
    h = Conv2d(x, param(rng, "K0", 3, 2, 3, 3), param(rng, "b0", 3), stride=1, padding=1)
    h = Conv2d(h, param(rng, "K1", 4, 3, 3, 3), param(rng, "b1", 4), stride=2, padding=1)
    h = AvgPool2d(MaxPool2d(h, 3, 2), 1)
    output = Conv2d(h, param(rng, "K2", 2, 4, 2, 2), param(rng, "b2", 2), stride=2)
    report = gradcheck(Graph([output], dtype=np.float64), output)
    assert report.ok, str(report)


def empty_and_float32_cases():
    rng = np.random.default_rng(8)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def x(*shape):
        return Input("x", f32(*shape), requires_grad=True)
    training = TrainingFlag("t", np.array(True))
    for B in (0, 3):
        keys = ExampleKeys("k", np.zeros((B, 2), np.uint64))
        yield f"Conv2d B={B}", Conv2d(x(B, 2, 5, 5), Parameter("K", f32(3, 2, 3, 3)),
                                      Parameter("b", f32(3)), 2, 1)
        yield f"MaxPool2d B={B}", MaxPool2d(x(B, 2, 5, 5), 2)
        yield f"AvgPool2d B={B}", AvgPool2d(x(B, 2, 5, 5), 3, 2)
        yield f"Flatten B={B}", Flatten(x(B, 2, 3, 3))
        yield f"Dropout B={B}", Dropout(x(B, 4), training, keys, 0.5, seed=1)
        yield f"LayerNorm B={B}", LayerNorm(x(B, 3, 4), Parameter("g", f32(4)), Parameter("b", f32(4)))
        yield f"GELU B={B}", GELU(x(B, 3, 4))
        yield f"SelfAttention B={B}", SelfAttention(x(B, 3, 12), 2)
        yield f"PatchEmbedding B={B}", PatchEmbedding(x(B, 1, 4, 4), Parameter("W", f32(4, 6)),
                                                      Parameter("b", f32(6)), Parameter("p", f32(4, 6)), 2)
        yield f"TokenMean B={B}", TokenMean(x(B, 3, 4))


@pytest.mark.parametrize("name,op", list(empty_and_float32_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_op_keeps_float32_and_takes_an_empty_batch(name, op):
    """A rank may hold no rows of a small batch; float32 stays float32 (the flat buffers, the speed)."""
    graph = Graph([op])
    graph.forward()
    graph.backward(op, np.ones(op.value.shape, np.float32))
    assert op.value.dtype == np.float32 and len(op.value) == len(op.inputs[0].value), name
    assert op.inputs[0].grad.dtype == np.float32 and op.inputs[0].grad.shape == op.inputs[0].value.shape
    assert graph.grads.dtype == np.float32


def test_dropout_needs_its_training_flag_fed_and_build_model_gives_each_layer_its_own_seed():
    from ddp_edf import ShapeError, build_model
    unfed = Dropout(Input("x", np.ones((2, 3))), TrainingFlag("training"), ExampleKeys("keys"), 0.5, seed=1)
    with pytest.raises(ShapeError, match="needs its TrainingFlag 'training' fed"):
        run(unfed)
    model = build_model("cnn", (1, 8, 8), 10, channels=[2], hidden=[16, 16], dropout=0.5)
    drops = [n for n in Graph(model.outputs).nodes if isinstance(n, Dropout)]
    assert len(drops) == 2 and drops[0].seed != drops[1].seed
    assert model.training is drops[0].training is drops[1].training and model.keys is drops[0].keys
    x = np.ones((4, 16))
    keys = np.stack([np.full(4, 3), np.arange(4)], 1).astype(np.uint64)
    assert not np.array_equal(dropped(x, keys, seed=drops[0].seed), dropped(x, keys, seed=drops[1].seed))
    assert build_model("cnn", (1, 8, 8), 10, channels=[2], hidden=[16]).training is None     # no dropout: none
