"""ddp_edf: the lecture's EDF computation-graph framework, trained data-parallel over MPI.

    engine/     graph, ops (conv, attention, dropout), gradcheck, models, optimizers   (knows nothing of MPI or files)
    data/       IDX datasets, splits, the epoch order          (knows nothing of graphs or MPI)
    parallel/   communicators, reducers, agreement, faults     (knows nothing of ops)
    training/   the data-parallel step, the Trainer around it  (uses all of the above)
    config.py build.py train.py evaluate.py plot.py            the command lines

Importing ddp_edf imports neither mpi4py nor anything else with side effects.
"""

from .data.sampler import batches
from .engine.attention import GELU, LayerNorm, PatchEmbedding, SelfAttention, TokenMean
from .engine.conv import AvgPool2d, Conv2d, Flatten, MaxPool2d, Reshape
from .engine.dropout import Dropout, ExampleKeys, TrainingFlag
from .engine.gradcheck import gradcheck
from .engine.graph import CompNode, Graph, Input, Parameter, ShapeError
from .engine.models import Model, build_model, cnn, lecture_mlp, logistic_regression, mlp, vit
from .engine.ops import Add, Affine, ErrorRate, LogLoss, Relu, Sigmoid, Softmax, SoftmaxCrossEntropy, Tanh
from .engine.optim import SGD, Adam, Schedule
from .errors import OptionError
from .parallel.faults import communicator, stop_signals
from .parallel.reducers import Allreduce, ExactSum
from .training.data_parallel import DataParallel, StepResult
from .training.errors import CheckpointError, Preempted, RunFolderError, TrainingError
from .training.options import CheckpointOptions, DistOptions, EvalOptions, LogOptions, Options, TrainOptions
from .training.trainer import Trainer

__version__ = "0.3.0"

__all__ = [
    "Adam", "Add", "Affine", "Allreduce", "AvgPool2d", "CheckpointError", "CheckpointOptions", "CompNode", "Conv2d",
    "DataParallel", "DistOptions", "Dropout", "ErrorRate", "EvalOptions", "ExactSum", "ExampleKeys", "Flatten", "GELU",
    "Graph", "Input", "LayerNorm", "LogLoss", "LogOptions", "MaxPool2d", "Model", "OptionError", "Options", "Parameter",
    "PatchEmbedding", "Preempted", "Relu", "Reshape", "RunFolderError", "SGD", "Schedule", "SelfAttention",
    "ShapeError", "Sigmoid", "Softmax", "SoftmaxCrossEntropy", "StepResult", "Tanh", "TokenMean", "TrainOptions",
    "Trainer", "TrainingError", "TrainingFlag", "batches", "build_model", "cnn", "communicator", "gradcheck",
    "lecture_mlp", "logistic_regression", "mlp", "stop_signals", "vit",
]
