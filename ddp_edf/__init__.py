"""ddp_edf: the lecture's EDF computation-graph framework, trained data-parallel over MPI.

    engine/     graph, ops, gradcheck, models, optimizers      (knows nothing of MPI or files)
    data/       IDX datasets, splits, the epoch order          (knows nothing of graphs or MPI)
    parallel/   communicators, agreement checks, faults        (knows nothing of ops)
    training/   the Trainer, evaluation, checkpoints, reports  (uses all of the above)
    train.py evaluate.py plot.py                               the command lines

Importing ddp_edf imports neither mpi4py nor anything else with side effects.
"""

from .engine.gradcheck import gradcheck
from .engine.graph import CompNode, Graph, Input, Parameter, ShapeError
from .engine.models import Model, build_model, lecture_mlp, logistic_regression, mlp
from .engine.ops import Add, Affine, ErrorRate, LogLoss, Relu, Sigmoid, Softmax, SoftmaxCrossEntropy, Tanh
from .engine.optim import SGD, Adam, Schedule
from .parallel.faults import communicator
from .training.checkpoint import CheckpointError
from .training.errors import Preempted, TrainingError
from .training.run_folder import RunFolderError
from .training.trainer import Trainer

__version__ = "0.2.0"

__all__ = [
    "Adam", "Add", "Affine", "CheckpointError", "CompNode", "ErrorRate", "Graph", "Input", "LogLoss", "Model",
    "Parameter", "Preempted", "Relu", "RunFolderError", "SGD", "Schedule", "ShapeError", "Sigmoid", "Softmax",
    "SoftmaxCrossEntropy", "Tanh", "Trainer", "TrainingError", "build_model", "communicator", "gradcheck",
    "lecture_mlp", "logistic_regression", "mlp",
]
