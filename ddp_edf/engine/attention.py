"""The ops of a transformer, each with its forward and backward side by side: layer norm, GELU, multi-head
self-attention, patch embedding and the mean over tokens.  With Affine (which acts on the last axis) and
Add they make a vision transformer block in a few lines (models.py).

Index letters: b the example, t and u tokens (queries and keys), d a feature of the model width D,
h a head, e a feature within a head (D = heads * E), f a pixel of a patch.  Sequences are (B, T, D).
As in ops.py, every backward only *adds* to its inputs' gradients.
"""

from __future__ import annotations

import numpy as np

from .graph import CompNode, Node


class LayerNorm(CompNode):
    """y[...,d] = gain[d] xhat[...,d] + bias[d],  xhat = (x - mean_d x) / sqrt(var_d x + eps)  over the last axis."""

    def __init__(self, x: Node, gain: Node, bias: Node, eps: float = 1e-5, name: str = ""):
        super().__init__(x, gain, bias, name=name)
        self.x, self.gain, self.bias, self.eps = x, gain, bias, eps

    def forward(self):
        x = self.x.value
        if self.gain.value.shape != x.shape[-1:] or self.bias.value.shape != x.shape[-1:]:
            raise self.shape_error("needs gain and bias of x's last axis (D,)")
        centred = x - x.mean(axis=-1, keepdims=True)
        # r[...] = 1 / sqrt(mean_d (x - mu)^2 + eps);  xhat[...,d] = (x[...,d] - mu[...]) r[...]
        self.r = 1 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.eps)
        self.xhat = centred * self.r
        self.value = self.xhat * self.gain.value + self.bias.value

    def backward(self):
        g, xhat = self.grad, self.xhat
        lead = tuple(range(g.ndim - 1))
        # gain.grad[d] += y.grad[...,d] xhat[...,d];   bias.grad[d] += y.grad[...,d]
        self.gain.addgrad((g * xhat).sum(axis=lead))
        self.bias.addgrad(g.sum(axis=lead))
        if self.x.needs_grad:
            # x.grad = r (dxhat - mean_d dxhat - xhat mean_d(dxhat xhat)),  dxhat[...,d] = y.grad[...,d] gain[d]
            dxhat = g * self.gain.value
            self.x.addgrad(self.r * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                                     - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)))


class GELU(CompNode):
    """y = x Phi(x) in the tanh form of Hendrycks & Gimpel (2016), as GPT-2 and BERT use it (NumPy has no erf):
    y = x (1 + tanh(z)) / 2,  z = sqrt(2/pi) (x + 0.044715 x^3)."""

    C = np.sqrt(2 / np.pi)

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        x = self.x.value
        # tanh_z = tanh(sqrt(2/pi) (x + 0.044715 x^3));  y = x (1 + tanh_z) / 2
        self.tanh_z = np.tanh(x.dtype.type(self.C) * (x + x.dtype.type(0.044715) * x * x * x))
        self.value = 0.5 * x * (1 + self.tanh_z)

    def backward(self):
        # x.grad += y.grad ((1 + tanh z) / 2 + x (1 - tanh^2 z) sqrt(2/pi) (1 + 3 0.044715 x^2) / 2)
        x, tz = self.x.value, self.tanh_z
        dz = x.dtype.type(self.C) * (1 + x.dtype.type(3 * 0.044715) * x * x)
        self.x.addgrad(self.grad * (0.5 * (1 + tz) + 0.5 * x * (1 - tz * tz) * dz))


class SelfAttention(CompNode):
    """Multi-head scaled dot-product self-attention over the queries, keys and values of one Affine:
    qkv (B, T, 3D) = [q | k | v], each split into ``heads`` heads of E = D / heads features ->  y (B, T, D):

        S[b,h,t,u] = q[b,h,t,e] k[b,h,u,e] / sqrt(E)
        A[b,h,t,u] = exp(S[b,h,t,u]) / sum_u' exp(S[b,h,t,u'])          (softmax over keys u)
        y[b,t,(h,e)] = A[b,h,t,u] v[b,h,u,e]
    """

    def __init__(self, qkv: Node, heads: int, name: str = ""):
        super().__init__(qkv, name=name)
        self.qkv, self.heads = qkv, heads

    def forward(self):
        qkv = self.qkv.value
        if qkv.ndim != 3 or qkv.shape[2] % (3 * self.heads):
            raise self.shape_error(f"needs qkv (B, T, 3D) with D a multiple of heads = {self.heads}")
        B, T, D3 = qkv.shape
        # q[b,h,t,e] = qkv[b,t,(0,h,e)], k = qkv[b,t,(1,h,e)], v = qkv[b,t,(2,h,e)]
        self.q, self.k, self.v = qkv.reshape(B, T, 3, self.heads, D3 // (3 * self.heads)).transpose(2, 0, 3, 1, 4)
        scale = qkv.dtype.type(1 / np.sqrt(self.q.shape[-1]))
        # S[b,h,t,u] = q[b,h,t,e] k[b,h,u,e] / sqrt(E), less its row max (changes nothing, keeps exp() <= 1)
        S = (self.q @ self.k.transpose(0, 1, 3, 2)) * scale
        A = np.exp(S - S.max(axis=-1, keepdims=True))
        # A[b,h,t,u] = exp(S[b,h,t,u]) / sum_u' exp(S[b,h,t,u'])
        self.A = A / A.sum(axis=-1, keepdims=True)
        # y[b,t,(h,e)] = A[b,h,t,u] v[b,h,u,e]
        self.value = (self.A @ self.v).transpose(0, 2, 1, 3).reshape(B, T, D3 // 3)

    def backward(self):
        B, T, D3 = self.qkv.value.shape
        q, k, v, A = self.q, self.k, self.v, self.A
        scale = q.dtype.type(1 / np.sqrt(q.shape[-1]))
        dy = self.grad.reshape(B, T, self.heads, D3 // (3 * self.heads)).transpose(0, 2, 1, 3)     # dy[b,h,t,e]
        # dv[b,h,u,e] = A[b,h,t,u] dy[b,h,t,e];   dA[b,h,t,u] = dy[b,h,t,e] v[b,h,u,e]
        dv = A.transpose(0, 1, 3, 2) @ dy
        dA = dy @ v.transpose(0, 1, 3, 2)
        # dS[b,h,t,u] = A[b,h,t,u] (dA[b,h,t,u] - dA[b,h,t,u'] A[b,h,t,u'])   (softmax's backward)
        dS = A * (dA - (dA * A).sum(axis=-1, keepdims=True))
        # dq[b,h,t,e] = dS[b,h,t,u] k[b,h,u,e] / sqrt(E);   dk[b,h,u,e] = dS[b,h,t,u] q[b,h,t,e] / sqrt(E)
        dq = (dS @ k) * scale
        dk = (dS.transpose(0, 1, 3, 2) @ q) * scale
        # qkv.grad[b,t,(j,h,e)] += [dq | dk | dv][b,h,t,e]
        self.qkv.addgrad(np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, D3))


class PatchEmbedding(CompNode):
    """ViT's patch embedding: cut (B, C, H, W) images into T = (H/p)(W/p) patches of p x p pixels and map each:
    y[b,t,d] = patch[b,t,f] W[f,d] + bias[d] + position[t,d],  f = (c, i, j) over C p p pixels -> y (B, T, D)"""

    def __init__(self, x: Node, W: Node, bias: Node, position: Node, patch: int, name: str = ""):
        super().__init__(x, W, bias, position, name=name)
        self.x, self.W, self.bias, self.position, self.patch = x, W, bias, position, patch

    def forward(self):
        x, p = self.x.value, self.patch
        if x.ndim != 4 or x.shape[2] % p or x.shape[3] % p or self.W.value.shape[0] != x.shape[1] * p * p \
                or self.position.value.shape != (x.shape[2] * x.shape[3] // (p * p), self.W.value.shape[1]):
            raise self.shape_error(f"needs x (B, C, H, W) with H, W multiples of patch = {p}, W (C p p, D), "
                                   f"position (T, D)")
        B, C, H, W = x.shape
        # patch[b,(P,Q),(c,i,j)] = x[b,c,p P + i,p Q + j]
        self.patches = x.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(
            B, (H // p) * (W // p), C * p * p)
        # y[b,t,d] = patch[b,t,f] W[f,d] + bias[d] + position[t,d]
        self.value = self.patches @ self.W.value + self.bias.value + self.position.value

    def backward(self):
        g, D = self.grad, self.W.value.shape[1]
        # W.grad[f,d] += patch[b,t,f] y.grad[b,t,d];   bias.grad[d] += y.grad[b,t,d];   position.grad[t,d] += y.grad[b,t,d]
        self.W.addgrad(self.patches.reshape(-1, self.patches.shape[2]).T @ g.reshape(-1, D))
        self.bias.addgrad(g.sum(axis=(0, 1)))
        self.position.addgrad(g.sum(axis=0))
        if self.x.needs_grad:
            # x.grad[b,c,p P + i,p Q + j] += y.grad[b,t,d] W[f,d]   (patches do not overlap: a reshape back)
            B, C, H, W = self.x.value.shape
            p = self.patch
            dpatch = (g @ self.W.value.T).reshape(B, H // p, W // p, C, p, p)
            self.x.addgrad(dpatch.transpose(0, 3, 1, 4, 2, 5).reshape(B, C, H, W))


class TokenMean(CompNode):
    """y[b,d] = x[b,t,d] / T summed over tokens t: a sequence (B, T, D) pooled to one vector per example."""

    def __init__(self, x: Node, name: str = ""):
        super().__init__(x, name=name)
        self.x = x

    def forward(self):
        if self.x.value.ndim != 3:
            raise self.shape_error("needs a sequence (B, T, D)")
        # y[b,d] = x[b,t,d] / T
        self.value = self.x.value.mean(axis=1)

    def backward(self):
        # x.grad[b,t,d] += y.grad[b,d] / T
        T = self.x.value.shape[1]
        self.x.addgrad(np.broadcast_to(self.grad[:, None, :] / T, self.x.value.shape))
