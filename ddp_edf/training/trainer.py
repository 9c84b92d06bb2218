"""The Trainer: any EDF model and NumPy data, trained in one process or data-parallel over MPI ranks.

    trainer = Trainer(loss, inputs=(x, y), train=(X, Y), optimizer=SGD(lr=0.1), global_batch=128)
    trainer.fit(epochs=5)       # python mine.py  |  mpirun -n 4 python mine.py: the same training

One step on every rank (``train_step``; the lines that exist for data parallelism say "# DDP:"):

    batch    = permutation(seed, epoch)[t*B : (t+1)*B]     the same indices on every rank
    shard    = my contiguous part of the batch             sizes differ by at most 1
    forward, backward seeded with 1/B                      B = the GLOBAL batch size
    one Allreduce (sum) of the gradients and two flags     = the gradient of the global batch mean
    optimizer.step                                         the same update on every rank

Around the step, ``fit`` does what a run needs: the epoch order, rank-0 logging, dev evaluation,
checkpoints and resume, a checkpoint on SIGTERM/SIGUSR1 (then ``Preempted``, exit code 75), the
watchdog, and at the end the test figures and OUT/model.npz.
"""

from __future__ import annotations

import math
import os
import secrets
import time

import numpy as np

from ..data import as_split, epoch_permutation, steps_per_epoch
from ..data.splits import fingerprint
from ..data.sampler import batch_indices, rank_pieces
from ..engine.graph import Graph, Input
from ..engine.optim import Schedule
from ..parallel.data_parallel import broadcast_params, check_agreement, check_in_sync
from ..parallel.comm import make_comm
from ..parallel.exact_sum import ExactSum
from ..parallel.faults import Watchdog, abort_on_uncaught_exception, stop_signals
from ..parallel.threads import configure_blas_threads
from .checkpoint import Checkpoints, save_parameters
from .errors import EXIT_PREEMPTED, Preempted, TrainingError, check_options, check_skipped
from .evaluation import Totals, evaluate, feed
from .report import Reporter, describe
from .run_folder import RunFolder


class Trainer:
    """``loss``: the per-example loss node (B,); ``inputs``: the Input nodes a batch fills, in the order
    of the split's arrays; ``train``/``dev``/``test``: tuples of arrays with one row per example, or
    splits (ddp_edf.data.splits); ``errors``: an optional metric node (B,).  The graph is built here
    (float32).  The README ("Training your own model and data from Python") describes every option."""

    def __init__(self, loss, inputs, train, *, optimizer, global_batch: int, errors=None, dev=None,
                 test=None, schedule: Schedule = Schedule(), micro_batches: int = 1, drop_last: bool = False,
                 seed: int = -1, out: str | None = None, checkpoint_every: int = 0, keep_checkpoints: int = 3,
                 log_every: int = 100, eval_every: int = 0, eval_batch: int = 1000, check_every: int = 1000,
                 timeout_s: float = 300.0, nonfinite: str = "stop", max_skipped: float = 0.1, comm=None,
                 deterministic: bool = False, chunk: int = 32, echo: bool = True, trajectory: dict | None = None,
                 run_config: dict | None = None):
        check_options(global_batch=global_batch, micro_batches=micro_batches, eval_batch=eval_batch, seed=seed,
                      chunk=chunk,
                      keep_checkpoints=keep_checkpoints, checkpoint_every=checkpoint_every, log_every=log_every,
                      eval_every=eval_every, check_every=check_every, timeout_s=timeout_s, nonfinite=nonfinite,
                      max_skipped=max_skipped, schedule=(schedule, optimizer.lr))
        self.comm = comm if hasattr(comm, "allreduce") else make_comm(comm or "auto")   # or "mpi", "serial"
        abort_on_uncaught_exception(self.comm)      # DDP: a rank that fails ends the job, never a hang
        self.threads_note = configure_blas_threads(self.comm.local_size, fixed=1 if deterministic else 0)
        self.loss, self.errors, self.inputs = loss, errors, tuple(inputs)
        self.graph = Graph([loss] if errors is None else [loss, errors], grad_tail=2)
        self.flags = self.graph.grads_with_tail[-2:]  # DDP: [non-finite loss, stop signal], summed with the grads
        if any(isinstance(n, Input) and n not in self.inputs for n in self.graph.nodes):
            raise ValueError("the graph reads an Input that is not in inputs=: list every Input a batch fills")
        self.train, self.dev, self.test = (as_split(split, name, len(self.inputs), self.graph.dtype)
                                           for split, name in ((train, "train"), (dev, "dev"), (test, "test")))
        self.optimizer, self.schedule, self.global_batch = optimizer, schedule, global_batch
        self.micro_batches, self.nonfinite, self.max_skipped = micro_batches, nonfinite, max_skipped
        self.deterministic, self.chunk = deterministic, chunk   # DDP: exact sums of fixed chunks' gradients
        self.exact = ExactSum(self.comm, self.graph.num_params) if deterministic else None
        self.out, self.echo = out, echo
        self.every = {"checkpoint": checkpoint_every, "log": log_every, "eval": eval_every, "check": check_every}
        self.eval_batch, self.checkpoints = eval_batch, Checkpoints(out, keep_checkpoints, self.comm)
        self.folder, self.seed_given = RunFolder(out, self.comm), seed >= 0
        self.steps_per_epoch = steps_per_epoch(len(self.train), global_batch, drop_last)
        if self.steps_per_epoch == 0:
            raise TrainingError(f"global_batch = {global_batch} exceeds the {len(self.train)} training examples "
                                f"with drop_last: no step to take")
        self.trajectory = {**(trajectory or {}), "global_batch": global_batch, "drop_last": drop_last,
                           "train_examples": len(self.train), "optimizer": type(optimizer).__name__,
                           "optimizer_state": list(optimizer.state_names),
                           "data CRC-32 (train, dev, test)": [fingerprint(s) for s in (self.train, self.dev, self.test)]}
        self.run_config = run_config
        check_agreement(self.comm, {**self.trajectory, "parameters": self.graph.layout()})  # DDP: same setup and data
        broadcast_params(self.comm, self.graph.params)   # DDP: every rank starts from rank 0's parameters
        self.seed = self.comm.broadcast_obj(secrets.randbits(31) if seed < 0 else seed)   # DDP: rank 0's seed
        self.step = self.skipped_steps = self.total_steps = 0
        self.stop_requested = self.stop_agreed = False
        self.totals, self.reporter = Totals(self.deterministic), Reporter(enabled=False)
        # DDP: a rank that waits longer than timeout_s for the others aborts the job (one process cannot wait)
        self.watchdog = Watchdog(self.comm, timeout_s if self.comm.world_size > 1 else 0)

    # -- one step -------------------------------------------------------------------------------

    def train_step(self, batch: np.ndarray) -> bool:
        """One SGD step on the global minibatch ``batch`` (example indices, the same on every rank).
        False if some rank's loss was not finite: then no rank changes its parameters."""
        graph = self.graph
        pieces = rank_pieces(len(batch), self.comm.rank, self.comm.world_size,   # DDP: my shard of the batch
                             self.micro_batches, self.chunk if self.deterministic else 0)
        if not pieces:
            graph.grads.fill(0)       # DDP: an empty shard (B < W, a short last batch) still joins the sum
        loss_sum = 0.0
        for k, (lo, hi) in enumerate(pieces):
            feed(self.inputs, self.train.batch(batch[lo:hi]))
            graph.forward()
            accumulate = k > 0 and not self.deterministic    # chunks are kept apart, micro-batches add up
            graph.backward(self.loss, grad_scale=1 / len(batch), accumulate=accumulate)   # DDP: 1/B_global
            if self.deterministic:
                self.exact.add(graph.grads)     # DDP: each chunk's gradient, summed exactly below
            errors = None if self.errors is None else self.errors.value
            loss_sum += self.totals.add(self.loss.value, errors, hi - lo)
        self.flags[:] = (not math.isfinite(loss_sum), self.stop_requested)      # DDP: my two flags
        if self.deterministic:    # DDP: the same bits on any number of ranks (parallel/exact_sum.py)
            self.exact.allreduce(graph.grads, self.flags, total_terms=-(-len(batch) // self.chunk))
        else:
            self.comm.allreduce(graph.grads_with_tail)  # DDP: ONE Allreduce: the sum over ranks of grads and flags
        non_finite, stops = self.flags
        self.stop_agreed = stops > 0           # DDP: a signal reached some rank: all stop after this step
        if not non_finite:
            self.optimizer.step(graph.params, graph.grads, self.learning_rate())   # the same on every rank
        self.step += 1
        return not non_finite

    def learning_rate(self, step: int | None = None) -> float:
        """eta at ``step`` (default: the next step's) under the schedule, for a run of total_steps."""
        return self.schedule(self.step if step is None else step, self.optimizer.lr, self.total_steps)

    # -- the run ------------------------------------------------------------------------------

    def fit(self, epochs: int = 1, max_steps: int = 0, resume: str | None = None) -> dict:
        """Train until ``epochs`` passes over the training set are done (at most ``max_steps``
        steps from the start of the run, 0 = no cap).  ``resume``: "auto" (the newest checkpoint
        in OUT, if any) or a checkpoint path.  Collective: every rank calls it.  Returns the figures."""
        check_options(epochs=epochs, max_steps=max_steps)
        check_agreement(self.comm, {"fit(epochs, max_steps, resume)": (epochs, max_steps, resume)})  # DDP
        self.total_steps = min(epochs * self.steps_per_epoch, max_steps or math.inf)
        self.stop_requested = self.stop_agreed = False
        self.totals = Totals(self.deterministic)
        with self.folder.claimed(fresh=not resume and self.step == 0) as note:   # rank 0 locks OUT
            self.reporter = Reporter(self.out, enabled=self.comm.is_root, echo=self.echo)
            try:
                with self.watchdog, stop_signals(self._request_stop):
                    self._log_start([note, self._resume(resume) if resume else ""])
                    return self._finish(self._loop())
            finally:
                self.reporter.close()

    def _request_stop(self):   # SIGTERM/SIGUSR1: acted on at the end of the step, by every rank together
        self.stop_requested = True

    def _loop(self) -> dict:
        last, permutation, started, samples = {}, None, time.perf_counter(), 0
        while self.step < self.total_steps:
            epoch, t = divmod(self.step, self.steps_per_epoch)
            if permutation is None or t == 0:
                permutation = epoch_permutation(self.seed, epoch, len(self.train))
            batch = batch_indices(permutation, t, self.global_batch)
            if not self.train_step(batch):
                self._non_finite(epoch)
            samples += len(batch)
            self.reporter.advance()
            self.watchdog.kick(f"step {self.step}")
            end_of_epoch = t == self.steps_per_epoch - 1 or self.step == self.total_steps
            if self._due("check"):
                check_in_sync(self.comm, self.graph.params, self.graph.segments(), self.step)
            if self._due("checkpoint"):
                self.save_checkpoint()
            eval_due = self._due("eval") if self.every["eval"] else end_of_epoch
            if self._due("log") or end_of_epoch or eval_due:
                last = self._report(epoch, samples / (time.perf_counter() - started), eval_due)
                started, samples = time.perf_counter(), 0
            if self.stop_agreed:
                saved = self.save_checkpoint()
                self.reporter.log(f"stopped by a signal after step {self.step}; " + (
                    "checkpoint written; continue with resume = auto" if saved else "no output folder: nothing saved")
                    + f" (exit code {EXIT_PREEMPTED})")
                raise Preempted(f"stopped by a signal after step {self.step}")
        return last

    def _due(self, what: str) -> bool:
        return bool(self.every[what]) and self.step % self.every[what] == 0

    def _non_finite(self, epoch: int):
        if self.nonfinite == "stop":
            raise TrainingError(f"non-finite loss at step {self.step} (epoch {epoch}): lower the learning rate, "
                                f"add warm-up steps, or skip such steps (nonfinite = \"skip\")")
        self.skipped_steps += 1
        self.reporter.log(f"step {self.step}: non-finite loss, step skipped on every rank "
                          f"({self.skipped_steps} so far)")
        check_skipped(self.skipped_steps, self.step, self.max_skipped, final=False)

    def _finish(self, last: dict) -> dict:
        check_in_sync(self.comm, self.graph.params, self.graph.segments(), self.step)  # DDP: agree at the end
        check_skipped(self.skipped_steps, self.step, self.max_skipped, final=True)
        self.save_checkpoint()
        result = {"step": self.step, "seed": self.seed, "last": last}
        if self.test is not None:
            result["test"] = test = self.evaluate(self.test)
            self.reporter.record(self.step, max(self.step - 1, 0) // self.steps_per_epoch, "test", test)
            self.reporter.log(f"test: {describe(test)}  ({test['examples']} examples)")
        if self.out and self.comm.is_root:
            save_parameters(os.path.join(self.out, "model.npz"), self.graph.state_dict())
            self.reporter.log(f"done: {self.step} steps; parameters in {os.path.join(self.out, 'model.npz')}")
        return result

    def evaluate(self, split) -> dict:
        """Loss (and error) over a whole split.  Collective: every rank calls it, each evaluates a shard."""
        split = as_split(split, "evaluation", len(self.inputs), self.graph.dtype)
        with self.watchdog:
            return evaluate(self.graph, self.loss, self.errors, self.inputs, split, self.comm, self.eval_batch,
                            on_batch=lambda: self.watchdog.kick("evaluation"), exact=self.deterministic)

    def _report(self, epoch: int, rate: float, with_dev: bool) -> dict:
        figures = {"train": self.totals.reduced(self.comm).figures(self.errors is not None)}  # DDP: all shards
        self.totals = Totals(self.deterministic)
        self.reporter.record(self.step, epoch, "train", figures["train"], samples_per_s=rate,
                             lr=self.learning_rate(self.step - 1))
        line = f"step {self.step:>7}  epoch {epoch}  train {describe(figures['train'])}"
        if with_dev and self.dev is not None and len(self.dev):
            figures["dev"] = self.evaluate(self.dev)
            self.reporter.record(self.step, epoch, "dev", figures["dev"])
            line += f"  dev {describe(figures['dev'])}"
        self.reporter.log(f"{line}  {rate:,.0f} samples/s")
        return figures

    def _log_start(self, notes: list):
        c, g, log = self.comm, self.graph, self.reporter.log
        for note in filter(None, notes):
            log(note)
        log(f"data: train {len(self.train)}, dev {len(self.dev) if self.dev else 0}, test "
            f"{len(self.test) if self.test else 0} ({getattr(self.train, 'source', type(self.train).__name__)})")
        log(f"model: {g.num_params:,} parameters ({', '.join(p.name for p in g.parameters)})")
        log(f"ranks: {c.world_size} ({c.backend}); {self.threads_note}; global batch {self.global_batch}; "
            f"{self.steps_per_epoch} steps/epoch; steps {self.step} -> {self.total_steps}; seed {self.seed}")
        self.reporter.start_progress(self.total_steps, self.step)

    # -- checkpoints and resume -----------------------------------------------------------------

    def save_checkpoint(self):
        """Rank 0 writes OUT/checkpoints/step-N.npz (nothing without an OUT); returns its path, or None.
        Parameters that are not finite are never saved: the run fails instead."""
        check_skipped(self.skipped_steps, self.step, self.max_skipped, final=False, params=self.graph.params)
        meta = {"step": self.step, "epoch": self.step // self.steps_per_epoch, "seed": self.seed,
                "skipped_steps": self.skipped_steps,
                "step_in_epoch": self.step % self.steps_per_epoch, "world_size": self.comm.world_size,
                "layout": self.graph.layout(), "trajectory": self.trajectory, "config": self.run_config}
        path = self.checkpoints.save(self.graph.params, self.optimizer.state_dict(), meta)
        if path:
            self.reporter.log(f"checkpoint: {path}")
        return path

    def load_parameters(self, path: str):
        """Start from the parameters in an .npz keyed by name (e.g. another run's model.npz)."""
        self.checkpoints.load_parameters(path, self.graph)

    def _resume(self, resume: str) -> str:
        """Continue a saved run from its checkpoint: the parameters, the optimizer, the step and the seed."""
        facts = self.checkpoints.restore(resume, self.graph, self.optimizer, self.trajectory, warn=self.reporter.log)
        if facts is None:
            return "no checkpoint to resume from: a fresh start"
        notes = [f"resumed from {facts['path']} at step {facts['step']} (saved by {facts['world_size']} ranks)",
                 facts["moved"]]
        if self.seed_given and self.seed != facts["seed"]:
            notes.append(f"seed {self.seed} not used: the checkpoint's seed {facts['seed']} continues its data order")
        self.step, self.seed, self.skipped_steps = facts["step"], facts["seed"], facts["skipped_steps"]
        return "; ".join(filter(None, notes))
