"""A straight transcription of the lecture's EDF (TTIC 31230, "The Core of EDF"): the baseline of
benchmarks/step_throughput.py.

Global node lists, Parameter.addgrad summing over the batch, and Affine's weight gradient built
as the (B, I, J) broadcast product before that sum -- exactly as on the slides.  Use it for
nothing but comparison: ddp_edf.engine (graph, ops) is the engine.
"""

import numpy as np

CompNodes = []
Parameters = []
learning_rate = 0.1
nBatch = 1


def reset():
    CompNodes.clear()
    Parameters.clear()


class Input:
    def __init__(self):
        pass

    def addgrad(self, delta):
        pass


class CompNode:
    def addgrad(self, delta):
        self.grad += delta


class Parameter:
    def __init__(self, value):
        Parameters.append(self)
        self.value = value

    def addgrad(self, delta):
        # sums over the minibatch
        self.grad += np.sum(delta, axis=0)

    def SGD(self):
        self.value -= learning_rate * self.grad


class Package:
    def __init__(self, W, B):
        self.W, self.B = Parameter(W), Parameter(B)


class Affine(CompNode):
    def __init__(self, Phi, x):
        CompNodes.append(self)
        self.x = x
        self.Phi = Phi

    def forward(self):
        self.value = np.matmul(self.x.value, self.Phi.W.value) + self.Phi.B.value

    def backward(self):
        self.x.addgrad(np.matmul(self.grad, self.Phi.W.value.transpose()))
        self.Phi.B.addgrad(self.grad)
        self.Phi.W.addgrad(self.x.value[:, :, np.newaxis] * self.grad[:, np.newaxis, :])


class Relu(CompNode):
    def __init__(self, x):
        CompNodes.append(self)
        self.x = x

    def forward(self):
        self.value = np.maximum(self.x.value, 0)

    def backward(self):
        self.x.addgrad(self.grad * (self.value > 0))


class Softmax(CompNode):
    def __init__(self, x):
        CompNodes.append(self)
        self.x = x

    def forward(self):
        bmax = np.max(self.x.value, axis=1, keepdims=True)
        e = np.exp(self.x.value - bmax)
        self.value = e / np.sum(e, axis=1, keepdims=True)

    def backward(self):
        s = np.sum(self.grad * self.value, axis=1, keepdims=True)
        self.x.addgrad(self.value * (self.grad - s))


class LogLoss(CompNode):
    def __init__(self, x, y):
        CompNodes.append(self)
        self.x = x
        self.y = y

    def forward(self):
        self.value = -np.log(self.x.value[np.arange(len(self.y.value)), self.y.value])

    def backward(self):
        grad = np.zeros_like(self.x.value)
        rows = np.arange(len(self.y.value))
        grad[rows, self.y.value] = -self.grad / self.x.value[rows, self.y.value]
        self.x.addgrad(grad)


def Forward():
    for c in CompNodes:
        c.forward()


def Backward(loss):
    for c in CompNodes + Parameters:
        c.grad = 0
    loss.grad = 1 / nBatch
    for c in CompNodes[::-1]:
        c.backward()


def SGD():
    for p in Parameters:
        p.SGD()
