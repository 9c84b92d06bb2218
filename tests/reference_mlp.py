"""An independent float64 NumPy MLP (no ddp_edf engine): the single-process reference for trainer tests."""

import numpy as np


def sgd_run(params, batches, lr, activation="relu"):
    """Plain SGD on a relu/tanh MLP with softmax cross-entropy; params = [W0, b0, W1, b1, ...] float64.

    ``batches`` yields (x, y) global batches; the gradient is the batch mean.
    """
    params = [p.astype(np.float64).copy() for p in params]
    for x, y in batches:
        x = x.astype(np.float64)
        activations = [x]
        h = x
        layers = len(params) // 2
        for layer in range(layers):
            W, b = params[2 * layer], params[2 * layer + 1]
            z = h @ W + b
            h = z if layer == layers - 1 else (np.maximum(z, 0) if activation == "relu" else np.tanh(z))
            activations.append(h)
        s = activations[-1]
        Q = np.exp(s - s.max(axis=1, keepdims=True))
        Q /= Q.sum(axis=1, keepdims=True)
        g = Q.copy()
        g[np.arange(len(y)), y] -= 1
        g /= len(y)
        grads = [None] * len(params)
        for layer in reversed(range(layers)):
            h_in = activations[layer]
            grads[2 * layer] = h_in.T @ g
            grads[2 * layer + 1] = g.sum(axis=0)
            if layer:
                g = g @ params[2 * layer].T
                out = activations[layer]
                g = g * (out > 0) if activation == "relu" else g * (1 - out ** 2)
        params = [p - lr * d for p, d in zip(params, grads)]
    return params
