"""The Trainer: run management around the data-parallel step (training/data_parallel.py).

    Trainer(loss, (x, y), train=(X, Y), optimizer=SGD(lr=0.1)).fit()   # python | mpirun -n 4 python: the same

Around ``dp.step``: the epoch order and the learning-rate schedule, rank-0 logging, dev evaluation,
checkpoints and resume (training/run_folder.py), a checkpoint on SIGTERM or SIGUSR1 (then ``Preempted``,
exit code 75), and at the end the test figures and OUT/model.npz.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from pathlib import Path

from ..data.sampler import batch_indices, epoch_permutation, steps_per_epoch
from ..data.splits import as_split, fingerprint
from ..engine.optim import Schedule
from ..errors import check_integer
from ..parallel.agreement import check_agreement, root_decides
from ..parallel.faults import communicator, stop_signals
from ..parallel.reducers import Allreduce, ExactSum
from .checkpoint import write_arrays
from .data_parallel import DataParallel
from .errors import EXIT_PREEMPTED, Preempted, TrainingError, check_skipped
from .options import Options
from .report import Reporter, describe
from .run_folder import RUN_FACTS, RunFolder


class Trainer:
    """``loss``: the per-example loss node (B,); ``inputs``: the Input nodes a batch fills, in the order of the
    split's arrays; ``train``/``dev``/``test``: tuples of arrays with one row per example, or splits; ``errors``:
    a metric node (B,); ``comm``: default ``communicator()``; ``options``: grouped as the config's sections."""

    def __init__(self, loss, inputs, train, *, optimizer, errors=None, dev=None, test=None,
                 schedule: Schedule = Schedule(), out=None, comm=None, options: Options | None = None):
        self.options = options = options or Options()
        t, d = options.train, options.dist
        schedule.check(optimizer.lr)
        if comm is None or isinstance(comm, str):
            comm = communicator(comm or "auto", blas_threads=1 if d.deterministic else 0)
        reducer = ExactSum(comm, d.chunk) if d.deterministic else Allreduce(comm, t.micro_batches)
        self.dp = DataParallel(loss, inputs, reducer, errors)         # DDP: checks the graph, broadcasts rank 0's
        self.comm, self.graph, self.optimizer, self.schedule, self.out = comm, self.dp.graph, optimizer, schedule, out
        self.train, self.dev, self.test = (None if split is None else as_split(split, name, len(inputs))
                                           for split, name in ((train, "train"), (dev, "dev"), (test, "test")))
        self.steps_per_epoch = steps_per_epoch(len(self.train), t.global_batch, t.drop_last)
        if self.steps_per_epoch == 0:
            raise TrainingError(f"global_batch = {t.global_batch} exceeds the {len(self.train)} training examples "
                                f"with drop_last: no step to take")
        self.run = {"global_batch": t.global_batch, "drop_last": t.drop_last, "train_examples": len(self.train),
                    "deterministic (chunk)": [d.deterministic, d.chunk if d.deterministic else None],
                    "data CRC-32": {name: fingerprint(split) for name, split in
                                    (("train", self.train), ("dev", self.dev), ("test", self.test))}}
        options_but_echo = {key: value for key, value in options.flat().items() if key != "log.echo"}
        check_agreement(comm, {**self.run, "out": out, **options_but_echo})     # DDP: the same data and options
        self.seed = comm.broadcast_obj(secrets.randbits(31) if t.seed < 0 else t.seed)   # DDP: rank 0's seed
        self.step = self.skipped_steps = self.total_steps = 0
        self.saved, self.interval, self.folder, self.reporter = None, [0.0, 0.0, 0], RunFolder(out, comm), Reporter(False)

    def fit(self, epochs: int | None = None, max_steps: int | None = None, resume: str | None = None,
            init: str | None = None) -> dict:
        """Train until ``epochs`` epochs are done (at most ``max_steps`` steps from the run's start, 0 = no cap; both
        default to the train options).  ``resume``: "auto" (OUT's newest checkpoint, if any) or a checkpoint path;
        ``init``: an .npz of parameters by name for a run that starts afresh.  Collective.  Returns the figures."""
        epochs, max_steps = (self.options.train.epochs if epochs is None else epochs,
                             self.options.train.max_steps if max_steps is None else max_steps)
        check_integer("fit", "epochs", epochs, 1)
        check_integer("fit", "max_steps", max_steps, 0)
        check_agreement(self.comm, {"fit(epochs, max_steps, resume, init)": (epochs, max_steps, resume, init)})  # DDP
        self.total_steps = min(epochs * self.steps_per_epoch, max_steps or math.inf)
        with self.folder.claimed():                               # rank 0 holds OUT's lock from here on
            notes, meta = self.folder.start(resume, init, self.dp, self.optimizer, self.run, self.step,
                                            self.total_steps, self.options.train.seed)   # afresh, or resumed
            if meta:
                self.step, self.seed, self.skipped_steps, self.interval = (meta[key] for key in RUN_FACTS)
            if meta and meta["finished"]:                          # finished before: write nothing
                Reporter(enabled=self.comm.is_root, echo=self.options.log.echo).log("; ".join(filter(None, [
                    *notes, f"already finished at step {self.step}, nothing to do"])))
                return {"step": self.step, "seed": self.seed, "already_finished": True}
            self.reporter = Reporter(self.out, enabled=self.comm.is_root, echo=self.options.log.echo)
            try:
                with stop_signals(self.dp.request_stop):           # SIGTERM/SIGUSR1: every rank stops after the step
                    self._log_start(notes)
                    return self._finish(self._loop())
            finally:
                self.reporter.close()

    def _loop(self) -> dict:
        every, B = self.options, self.options.train.global_batch
        last, permutation, started, samples = {}, None, time.perf_counter(), 0

        def due(interval: int) -> bool:
            return bool(interval) and self.step % interval == 0
        while self.step < self.total_steps:
            epoch, t = divmod(self.step, self.steps_per_epoch)
            if permutation is None or t == 0:
                permutation = epoch_permutation(self.seed, epoch, len(self.train))
            batch = batch_indices(permutation, t, B)
            result = self.dp.step(self.train, batch, self.optimizer, self.learning_rate())
            self.step += 1
            if not result.taken:
                self._non_finite(epoch, batch)
            # the sums since the last report (checkpointed, so a resumed run reports the same figures)
            self.interval = [a + b for a, b in zip(self.interval, (result.loss_sum, result.error_sum, result.examples))]
            samples += len(batch)
            self.reporter.advance()
            if due(every.dist.check_every):
                self.dp.check_in_sync(self.step)
            end_of_epoch = t == self.steps_per_epoch - 1 or self.step == self.total_steps
            eval_due = due(every.eval.every) if every.eval.every else end_of_epoch
            if due(every.log.every) or end_of_epoch or eval_due:
                last = self._report(epoch, samples / (time.perf_counter() - started), eval_due)
                started, samples = time.perf_counter(), 0
            if due(every.checkpoint.every_steps) and self.step < self.total_steps:   # the last: by _finish
                self.save_checkpoint()
            if result.stop:                                        # DDP: a signal reached some rank
                note = "checkpoint written; resume = auto" if self.save_checkpoint() else "no output folder, nothing saved"
                self.reporter.log(f"stopped by a signal after step {self.step}; {note} (exit code {EXIT_PREEMPTED})")
                raise Preempted(f"stopped by a signal after step {self.step}")
        return last

    def learning_rate(self, step: int | None = None) -> float:
        """eta at ``step`` (default: the next step's) under the schedule, for a run of total_steps."""
        return self.schedule(self.step if step is None else step, self.optimizer.lr, self.total_steps)

    def _non_finite(self, epoch: int, batch):
        where = self.dp.nonfinite_input(self.train, batch)
        fix = (f"the train data holds NaN or inf ({where}): clean it" if where else
               "lower the learning rate, add warm-up steps, or skip such steps (nonfinite = \"skip\")")
        if self.options.dist.nonfinite == "stop":
            raise TrainingError(f"non-finite loss at step {self.step} (epoch {epoch}): {fix}")
        self.skipped_steps += 1
        self.reporter.log(f"step {self.step}: non-finite loss, skipped on every rank ({self.skipped_steps}): {fix}")
        check_skipped(self.skipped_steps, self.step, self.options.dist.max_skipped, final=False)

    def _report(self, epoch: int, rate: float, with_dev: bool) -> dict:
        (loss, errors, examples), self.interval = self.interval, [0.0, 0.0, 0]
        figures = {"train": {"loss": loss / examples, **({"error": errors / examples} if self.dp.errors else {})}}
        train, line = figures["train"], f"step {self.step:>7}  epoch {epoch}  train {describe(figures['train'])}"
        self.reporter.record(self.step, epoch, "train", train, samples_per_s=rate, lr=self.learning_rate(self.step - 1))
        if with_dev and self.dev is not None and len(self.dev):
            figures["dev"] = self.evaluate(self.dev)
            self.reporter.record(self.step, epoch, "dev", figures["dev"])
            line += f"  dev {describe(figures['dev'])}"
        self.reporter.log(f"{line}  {rate:,.0f} samples/s")
        return figures

    def _finish(self, last: dict) -> dict:
        """A checkpoint, the test figures, model.npz, then the checkpoint marked finished (else a resume finishes)."""
        self.dp.check_in_sync(self.step)                          # DDP: every rank holds the same parameters
        check_skipped(self.skipped_steps, self.step, self.options.dist.max_skipped, final=True)
        self.save_checkpoint()
        result = {"step": self.step, "seed": self.seed, "last": last}
        if self.test is not None:
            result["test"] = test = self.evaluate(self.test)
            self.reporter.record(self.step, max(self.step - 1, 0) // self.steps_per_epoch, "test", test)
            self.reporter.log(f"test: {describe(test)}  ({test['examples']} examples)")
        if self.out:
            model = Path(self.out) / "model.npz"
            root_decides(self.comm, lambda: write_arrays(model, self.graph.state_dict()))
            self.save_checkpoint(finished=True)
            self.reporter.log(f"done: {self.step} steps; parameters in {model}")
        return result

    def _log_start(self, notes: list):
        c, g, sizes = self.comm, self.graph, [len(s) if s else 0 for s in (self.train, self.dev, self.test)]
        data = "train {}, dev {}, test {} ({})".format(*sizes, getattr(self.train, "source", "a split"))
        for line in filter(None, [*notes, f"data: {data}; model: {g.num_params:,} parameters "
                                  f"({', '.join(p.name for p in g.parameters)})",
                                  f"ranks: {c.world_size} ({c.backend}); {getattr(c, 'blas_note', 'BLAS as found')}; "
                                  f"global batch {self.options.train.global_batch}; {self.steps_per_epoch} steps/epoch;"
                                  f" steps {self.step} -> {self.total_steps}; seed {self.seed}"]):
            self.reporter.log(line)
        self.reporter.start_progress(self.total_steps, self.step)

    def evaluate(self, split) -> dict:
        """Loss (and error) over a whole split, exact.  Collective: every rank calls it, each evaluates a shard."""
        return self.dp.evaluate(as_split(split, "evaluation", len(self.dp.inputs)), self.options.eval.batch)

    def save_checkpoint(self, finished: bool = False):
        """Write OUT/checkpoints/step-N.npz (rank 0): its path, or None without OUT.  Non-finite parameters fail."""
        check_skipped(self.skipped_steps, self.step, self.options.dist.max_skipped, False, self.graph.params)
        path = self.folder.checkpoint_path(self.step)
        if path is not None and self.saved != (self.step, finished):
            epoch, step_in_epoch = divmod(self.step, self.steps_per_epoch)
            self.dp.save(path, self.optimizer, step=self.step, epoch=epoch, step_in_epoch=step_in_epoch, seed=self.seed,
                         skipped_steps=self.skipped_steps, world_size=self.comm.world_size, run=self.run,
                         interval=self.interval, options=dataclasses.asdict(self.options), finished=finished)
            self.folder.prune(self.options.checkpoint.keep)
            self.reporter.log(f"checkpoint: {path}")
            self.saved = (self.step, finished)
        return path

    def load_parameters(self, path):
        """Start from the parameters of an .npz keyed by name (another run's model.npz), which rank 0 reads."""
        self.dp.load_parameters(path)
