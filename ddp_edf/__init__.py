"""ddp_edf: the lecture's EDF computation-graph framework, trained data-parallel over MPI.

Importing the engine (graph, ops, models, optim, gradcheck) never imports mpi4py.
Importing ddp_edf before NumPy lets it pick OpenBLAS's fastest GEMM kernels for the CPU (see blas.py).
"""

from .blas import choose_openblas_kernel

# Must run before the first `import numpy` of the process: OpenBLAS reads its kernel choice once.
BLAS_KERNEL_NOTE = choose_openblas_kernel()

from .graph import CompNode, Graph, Input, Parameter, ShapeError  # noqa: E402
from .gradcheck import gradcheck
from .models import Model, build_model, lecture_mlp, logistic_regression, mlp
from .ops import (Add, Affine, ErrorRate, LogLoss, Relu, Sigmoid, Softmax, SoftmaxCrossEntropy,
                  Tanh)
from .optim import SGD, Adam, learning_rate

__version__ = "0.1.0"

__all__ = [
    "Add", "Adam", "Affine", "CompNode", "ErrorRate", "Graph", "Input", "LogLoss", "Model",
    "Parameter", "Relu", "SGD", "ShapeError", "Sigmoid", "Softmax", "SoftmaxCrossEntropy", "Tanh",
    "build_model", "gradcheck", "learning_rate", "lecture_mlp", "logistic_regression", "mlp",
]
