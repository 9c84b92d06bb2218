"""The data-parallel step as one unit: the lecture's Forward / Backward / SGD on every rank, each on its
shard of the global minibatch, with one reduction between backward and the update.

    comm = communicator()
    dp = DataParallel(loss, (x, y), Allreduce(comm), errors=errors)   # or ExactSum(comm, chunk=32)
    for batch in batches(len(X), global_batch=128, seed=1, epoch=0):  # the same indices on every rank
        result = dp.step((X, Y), batch, optimizer)                    # result.loss, .taken, .stop
    figures = dp.evaluate((Xd, Yd))                                   # exact, sharded over ranks
    dp.save(path, optimizer) ... dp.load(path, optimizer)             # rank 0 writes; every rank loads

Making it broadcasts rank 0's parameters (every rank checks first that all hold the same graph).
``step``, ``evaluate``, ``save``, ``load`` and ``check_in_sync`` are collective: every rank calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.splits import as_split
from ..engine.dropout import ExampleKeys, TrainingFlag
from ..engine.graph import CompNode, Graph, Input
from ..parallel.agreement import broadcast_params, check_agreement, check_in_sync, root_decides
from .checkpoint import check_fits, read_checkpoint, read_parameters, write_checkpoint
from .errors import CheckpointError
from .evaluation import evaluate


@dataclass(frozen=True)
class StepResult:
    """What a step did: sums over the whole global batch, the same on every rank."""

    loss_sum: float      # sum of the per-example losses (not finite: some rank's loss was not)
    error_sum: float     # sum of the per-example errors (0 without an errors node)
    examples: int        # B, the global batch
    taken: bool          # False: a loss was not finite, and no rank changed its parameters
    stop: bool           # some rank asked to stop (request_stop, a signal): stop after this step, together

    @property
    def loss(self) -> float:
        return self.loss_sum / self.examples

    @property
    def error(self) -> float:
        return self.error_sum / self.examples


class DataParallel:
    """``loss``: the per-example loss node (B,); ``inputs``: the Input nodes a batch fills, in the order of
    the data's arrays; ``reducer``: Allreduce(comm) or ExactSum(comm) (parallel/reducers.py);
    ``errors``: an optional per-example metric node (B,).  A graph's TrainingFlag and ExampleKeys (dropout) are
    fed by the step too: True and (optimizer step, example index) of each row in ``step``, False in ``evaluate``."""

    def __init__(self, loss, inputs, reducer, errors=None):
        for node, what in ((loss, "loss"), (errors, "errors")):
            if not (isinstance(node, CompNode) or (what == "errors" and node is None)):
                raise TypeError(f"{what} must be a computed node with one value per example (e.g. "
                                f"SoftmaxCrossEntropy(scores, y)), not {node!r} ({type(node).__name__})")
        self.loss, self.errors, self.inputs = loss, errors, tuple(inputs)
        self.reducer, self.comm = reducer, reducer.comm
        self.graph = Graph([loss] if errors is None else [loss, errors], grad_buffer=reducer.gradient_buffer)
        self.facts = [n for n in self.graph.nodes if isinstance(n, (TrainingFlag, ExampleKeys))]
        unlisted = [n.describe() for n in self.graph.nodes
                    if isinstance(n, Input) and n not in self.inputs and n not in self.facts]
        if unlisted or not all(isinstance(node, Input) for node in self.inputs):
            raise ValueError(f"inputs= must list every Input node a batch fills (the graph reads {unlisted} "
                             f"too), and nothing else")
        self.stop_requested, self._splits = False, {}
        check_agreement(self.comm, {"graph": self.graph.structure(), "parameters": self.graph.layout()})  # DDP
        broadcast_params(self.comm, self.graph.params)      # DDP: every rank starts from rank 0's parameters

    def request_stop(self):
        """Ask every rank to stop: the next step's result says ``stop`` on all of them, once (a signal handler)."""
        self.stop_requested = True

    def step(self, data, batch: np.ndarray, optimizer, lr: float | None = None) -> StepResult:
        """One step of ``optimizer`` (at learning rate ``lr``, default its own) on the global minibatch ``batch``:
        example indices into ``data``, the same on every rank."""
        data, graph, B = self._split(data, "train"), self.graph, len(batch)
        for k, (lo, hi) in enumerate(self.reducer.pieces(B)):                  # DDP: my shard of the batch
            self._feed(data, batch[lo:hi], step=optimizer.steps_taken)
            graph.forward()
            graph.backward(self.loss, grad_scale=1 / B, accumulate=k > 0)     # DDP: 1/B_global; pieces add up
            self.reducer.add(graph.grads, *self._sums(hi - lo))                # DDP: my part of the sum
        stop, self.stop_requested = self.stop_requested, False                 # a request is reported once
        loss_sum, error_sum, stop = self.reducer.reduce(stop)                  # DDP: ONE collective over ranks
        taken = math.isfinite(loss_sum)
        if taken:
            optimizer.step(graph.params, graph.grads, lr)                      # the same update on every rank
        return StepResult(loss_sum, error_sum, B, taken, stop)

    def evaluate(self, data, batch: int = 1000) -> dict:
        """{'loss', 'error' (with an errors node), 'examples'} over all of ``data``, exact, sharded over ranks."""
        data = self._split(data, "evaluation")

        def run_piece(lo, hi):
            self._feed(data, slice(lo, hi), hi - lo)
            self.graph.forward()
            self._sums(hi - lo)
            return self.loss.value, None if self.errors is None else self.errors.value
        return evaluate(run_piece, len(data), self.comm, batch, with_error=self.errors is not None)

    def save(self, path, optimizer=None, **meta):
        """Rank 0 writes the parameters and the optimizer's state to the checkpoint ``path`` (training/checkpoint.py),
        with ``meta`` (JSON values) beside them; a failure reaches every rank."""
        root_decides(self.comm, lambda: write_checkpoint(path, self.graph, optimizer, meta))

    def load(self, path, optimizer=None, check=lambda meta: None) -> dict:
        """Every rank takes the parameters (and the optimizer's state) of the checkpoint ``path``, which rank 0
        reads and checks (the same graph, parameters and optimizer; and ``check(meta)``).  Returns its meta."""
        found = {}

        def read():
            found.update(read_checkpoint(path))
            check_fits(found, self.graph, optimizer)
            check(found["meta"])
            return found["meta"]
        meta = root_decides(self.comm, read)
        if self.comm.is_root:
            self.graph.params[...] = found["params"]
        broadcast_params(self.comm, self.graph.params)                        # DDP: rank 0's file to every rank
        if optimizer is not None:
            n, dtype = self.graph.num_params, self.graph.dtype
            state = {name: self.comm.broadcast(found["optim"][name].astype(dtype) if self.comm.is_root
                                               else np.empty(n, dtype)) for name in optimizer.state_names}
            steps = self.comm.broadcast_obj(int(found["optim"]["steps_taken"]) if self.comm.is_root else None)
            optimizer.load_state_dict({**state, "steps_taken": steps}, dtype)
        return meta

    def load_parameters(self, path):
        """Start from the parameters in an .npz keyed by name (another run's model.npz), which rank 0 reads."""
        def take():
            try:
                self.graph.load_state_dict(read_parameters(path), source=str(path))
            except ValueError as error:      # names or shapes that do not fit this model
                raise CheckpointError(str(error)) from None
        root_decides(self.comm, take)
        broadcast_params(self.comm, self.graph.params)

    def check_in_sync(self, step: int):
        """Raise OutOfSyncError on every rank if any rank's parameters differ from rank 0's, naming the first."""
        check_in_sync(self.comm, self.graph.params, self.graph.segments(), step)

    # -- feeding the graph -------------------------------------------------------------------------

    def _split(self, data, name):
        """``data`` as a split: a split as it is; arrays (or lists, converted once) wrapped, and kept while the
        same objects come back (each step gets its data again)."""
        if hasattr(data, "batch"):
            return data
        ids, kept = tuple(map(id, data)), self._splits.get(name)
        if kept is None or kept[0] != ids:
            kept = self._splits[name] = (ids, as_split(data, name, len(self.inputs), self.graph.dtype), data)
        return kept[1]

    def _feed(self, data, index, rows: int | None = None, step: int | None = None):
        """Each Input's value <- its array of the examples ``index``: one array per Input, one row per example.
        ``step``: training at this optimizer step (else evaluating), for a TrainingFlag and ExampleKeys."""
        arrays, rows = tuple(data.batch(index)), len(index) if rows is None else rows
        name = getattr(data, "name", "") or type(data).__name__
        if len(arrays) != len(self.inputs):
            raise ValueError(f"the {name} split's batch() gave {len(arrays)} arrays for {len(self.inputs)} inputs")
        for k, (node, array) in enumerate(zip(self.inputs, arrays)):
            if len(array) != rows:
                raise ValueError(f"the {name} split's batch() gave {len(array)} rows for {rows} examples "
                                 f"(array {k}, for {node.describe()})")
            node.value = array
        if self.facts:                    # the lecture's Inputs, fed like x: no trainer state inside the graph
            examples = np.arange(index.start, index.stop) if isinstance(index, slice) else index
            keys = np.stack(np.broadcast_arrays(np.uint64(step or 0), np.asarray(examples, np.uint64)), 1)
            for node in self.facts:
                node.value = np.array(step is not None) if isinstance(node, TrainingFlag) else keys

    def _sums(self, rows: int) -> tuple[float, float]:
        """The loss sum and error sum of the examples in the graph: one value each per example."""
        loss, errors = self.loss.value, None if self.errors is None else self.errors.value
        if np.shape(loss) != (rows,) or (errors is not None and np.shape(errors) != (rows,)):
            raise ValueError(f"the loss (and errors) must hold one value per example, shape ({rows},); got "
                             f"{np.shape(loss)}{'' if errors is None else f' and {np.shape(errors)}'}")
        return float(np.asarray(loss).sum(dtype=np.float64)), 0.0 if errors is None else \
            float(np.asarray(errors).sum(dtype=np.float64))

    def nonfinite_input(self, data, batch) -> str | None:
        """Where the inputs of ``batch`` hold NaN or inf ('example 17, input x'), or None: a fault of the data."""
        data = self._split(data, "train")
        for node, array in zip(self.inputs, data.batch(batch)):
            array = np.asarray(array)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                row = int(np.nonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0][0])
                return f"example {int(batch[row])}, input {node.describe()}"
        return None
