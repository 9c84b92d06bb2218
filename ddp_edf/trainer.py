"""The training loop, written once for W ranks (one process is W = 1).

One step, on every rank (lines that exist because of data parallelism carry a "DDP:" tag):

    batch   = permutation(seed, epoch)[t*B : (t+1)*B]            same on every rank
    shard   = this rank's contiguous part of the batch            (sizes differ by at most 1)
    forward, backward with loss seed 1/B                          B = the GLOBAL batch size
    sum over ranks of the flat gradient buffer (one collective)   = gradient of the global mean
    optimizer.step(lr(step))                                      identical on every rank

With dist.reduction = shared (ranks on one host), the parameters live once per host in shared
memory and each rank runs the optimizer on its part of them; with a buffer ring (dist.ring_mb)
the update writes the next of several copies and gradients rotate through slot sets alike, or, in
steps where rank 0's tuner finds it faster (dist.ring_autotune), the ring pauses and the update
is in place.  The result is the same.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import CheckpointError, check_compatible, save_checkpoint
from .config import Config, to_dict
from .data import epoch_permutation, load_dataset, prepare_dataset, shard_bounds, steps_per_epoch
from .data.batches import BatchLoader
from .data.sampler import global_batch
from .dist.data_parallel import broadcast_params, check_in_sync
from .dist.reduce import make_reducer
from .dist.ring_tuner import RingTuner
from .models import build_model
from .optim import SGD, Adam, learning_rate

PHASES = ("data", "forward", "backward", "allreduce", "optimizer")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says why and what to try."""


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: every rank finished its step and a checkpoint was written."""


def build_optimizer(optim, params, grads):
    if optim.name == "sgd":
        return SGD(params, grads, optim.momentum, optim.nesterov, optim.weight_decay)
    return Adam(params, grads, (optim.beta1, optim.beta2), optim.eps, optim.weight_decay)


def load_init(path: str) -> dict:
    """Parameters from an .npz keyed by parameter name (never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise TrainingError(f"--init {path}: file not found") from None
    except (ValueError, OSError) as error:
        raise TrainingError(f"--init {path}: not a readable .npz of arrays ({error})") from None


@dataclass
class Totals:
    """Sums over examples (float64), reduced across ranks before they are reported."""

    loss: float = 0.0
    errors: float = 0.0
    count: float = 0.0

    def add(self, losses: np.ndarray, errors: np.ndarray) -> float:
        """Add a (micro-)batch; returns its loss sum."""
        loss_sum = float(losses.sum(dtype=np.float64))
        self.loss += loss_sum
        self.errors += float(errors.sum(dtype=np.float64))
        self.count += len(losses)
        return loss_sum

    def reduced(self, comm) -> "Totals":
        buffer = comm.allreduce(np.array([self.loss, self.errors, self.count], dtype=np.float64))
        return Totals(*buffer.tolist())

    def figures(self) -> dict:
        return {"loss": self.loss / self.count, "error": self.errors / self.count} if self.count else \
            {"loss": float("nan"), "error": float("nan")}


@dataclass
class StepTimes:
    seconds: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    steps: int = 0
    rotating_steps: int = 0   # steps whose update rotated the buffer ring (the rest were in place)

    def per_step_ms(self) -> dict:
        return {f"{phase}_ms": 1000 * total / max(self.steps, 1) for phase, total in self.seconds.items()}


def evaluate(model, split, comm, loader: BatchLoader, batch: int) -> dict:
    """Loss and error rate over the whole split: each rank takes a contiguous shard, sums are reduced."""
    totals = Totals()
    start, stop = shard_bounds(len(split), comm.rank, comm.world_size)  # DDP: this rank's part
    for lo in range(start, stop, batch):
        model.x.value, model.y.value = loader.load_range(split, lo, min(lo + batch, stop))
        model.graph.forward()
        totals.add(model.loss.value, model.errors.value)
    totals = totals.reduced(comm)  # DDP: sums and counts, never averages of averages
    return {**totals.figures(), "examples": int(totals.count)}


class Trainer:
    def __init__(self, config: Config, comm, reporter, init_path: str | None = None):
        self.config, self.comm, self.reporter = config, comm, reporter
        data = config.data
        if comm.is_root:  # DDP: one rank downloads and decompresses while the others wait
            prepare_dataset(data.dataset, data.dir, data.download)
        comm.barrier()
        self.dataset = load_dataset(data.dataset, data.dir, False, data.dev_size, data.train_limit)
        m = config.model
        self.model = build_model(m.kind, self.dataset.num_features, self.dataset.num_classes, m.hidden,
                                 m.activation, seed=m.init_seed)
        self.graph = self.model.graph
        if init_path and comm.is_root:
            try:
                self.graph.load_state_dict(load_init(init_path), source=f"--init {init_path}")
            except ValueError as error:
                raise TrainingError(str(error)) from None
        broadcast_params(comm, self.graph.params)  # DDP: every rank starts from rank 0's parameters
        # DDP: the reduced buffer is the gradients plus three flags, [non-finite loss, stop signal,
        # rank 0's ring vote], so the one collective of a step carries every agreement with the
        # gradient sum.  Backward writes into the reducer's input (shared memory with
        # dist.reduction = shared); the optimizer reads the reducer's total (the same array for a
        # plain Allreduce).
        n = self.graph.num_params
        try:
            self.reducer = make_reducer(comm, n + 3, self.graph.dtype, config.dist.reduction, tail=3,
                                        ring_bytes=config.dist.ring_mb << 20)
        except ValueError as error:  # the same verdict on every rank
            raise TrainingError(str(error)) from None
        self.graph.grads_with_tail(3, storage=self.reducer.input)
        self.total_flags = self.reducer.tail_total
        if self.reducer.params is not None:  # DDP: one copy of the parameters per host, in shared memory
            self.graph.params_into(self.reducer.params[:n], copy_values=comm.local_rank == 0)
            self.reducer.finish_update()
        # DDP: each rank updates its part of the parameters (all of them, except with shared memory)
        self.part = self.reducer.update_part(n)
        self.optimizer = build_optimizer(config.optim, self.graph.params[self.part], self.reducer.total[self.part])
        self._views_by_position = {}
        self._use_step_buffers()
        # DDP: rank 0 alone times steps and decides, for all, whether the ring rotates
        self.ring_tuner = RingTuner() if (comm.is_root and self.reducer.depth > 1
                                          and config.dist.ring_autotune) else None
        self.ring_vote = 1.0 if comm.is_root else 0.0   # rotate (as long as no tuner says otherwise)
        self.loader = BatchLoader(self.dataset.num_features)
        self.segments = [(p.name, int(a), int(b)) for p, a, b in
                         zip(self.graph.parameters, self.graph.offsets[:-1], self.graph.offsets[1:])]
        self.seed = self._agree_on_seed()
        t = config.train
        self.steps_per_epoch = steps_per_epoch(len(self.dataset.train), t.global_batch, t.drop_last)
        if self.steps_per_epoch == 0:
            raise TrainingError(f"train.global_batch = {t.global_batch} exceeds the {len(self.dataset.train)} "
                                f"training examples with drop_last: no step to take")
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.step = 0
        self.skipped_steps = 0
        self.on_step = lambda what="": None  # called after every step (the watchdog's kick)
        self.on_epoch_end = lambda epoch: None  # called on every rank after each epoch (and the last step)
        self.stop_requested = False          # set by the SIGTERM/SIGUSR1 handler
        self.stop_agreed = False             # some rank had stop_requested at the last Allreduce
        self.out_dir = None                  # where rank 0 writes checkpoints (None: never)

    def _agree_on_seed(self) -> int:
        seed = self.config.train.seed
        if seed < 0 and self.comm.is_root:
            seed = secrets.randbits(31)  # rank 0 draws; the log records it so the run can be repeated
        return self.comm.broadcast_obj(seed)  # DDP: rank 0 owns the seed

    # -- one step ------------------------------------------------------------------------------

    def _use_step_buffers(self):
        """Point gradients, flags, parameters and the optimizer at the reducer's buffers for this step.
        They move every step while the reducer rotates through its ring, so the views for each
        position of the ring are made on its first visit and kept (slicing them anew took ~9 us)."""
        reducer = self.reducer
        position = (reducer.turn, reducer.rotating)
        views = self._views_by_position.get(position)
        if views is None:
            n = self.graph.num_params
            if reducer.depth > 1:
                self.graph.grads_into(reducer.input[:n], copy_values=False)
                self.graph.params_into(reducer.params[:n], copy_values=False)
            # DDP: the update reads this copy, writes the next (or the same)
            update = (reducer.params[self.part], reducer.next_params[self.part]) \
                if reducer.next_params is not None else None
            views = self._views_by_position[position] = (reducer.input[n:], self.graph.views(), update)
        self.local_flags, graph_views, update = views
        self.graph.restore_views(graph_views)
        if update is not None:
            self.optimizer.retarget(*update)

    def train_step(self, batch_indices: np.ndarray, times: StepTimes, totals: Totals) -> bool:
        """Forward, backward, Allreduce, update on this rank's shard.  False if the step was skipped."""
        comm, graph, model = self.comm, self.graph, self.model
        t_start = time.perf_counter()
        lo, hi = shard_bounds(len(batch_indices), comm.rank, comm.world_size)  # DDP: my contiguous part
        shard = batch_indices[lo:hi]
        scale = 1.0 / len(batch_indices)  # DDP: 1 / B_global, not 1 / len(shard)
        pieces = self.config.train.micro_batches
        local_loss, first = 0.0, True
        for k in range(pieces):
            a, b = shard_bounds(len(shard), k, pieces)
            if a == b:
                continue
            t0 = time.perf_counter()
            model.x.value, model.y.value = self.loader.load(self.dataset.train, shard[a:b])
            t1 = time.perf_counter()
            graph.forward()
            t2 = time.perf_counter()
            graph.backward(model.loss, scale, accumulate=not first)  # micro-batches add up
            t3 = time.perf_counter()
            local_loss += totals.add(model.loss.value, model.errors.value)
            first = False
            seconds = times.seconds
            seconds["data"] += t1 - t0
            seconds["forward"] += t2 - t1
            seconds["backward"] += t3 - t2
        if first:
            graph.grads.fill(0)  # DDP: an empty shard (short last batch, B < W) still joins the Allreduce
        self.local_flags[0] = 0.0 if math.isfinite(local_loss) else 1.0   # DDP: summed: every rank learns of it
        self.local_flags[1] = 1.0 if self.stop_requested else 0.0         # DDP: a signal reached this rank
        self.local_flags[2] = self.ring_vote                              # DDP: rank 0's vote, 0 elsewhere
        t4 = time.perf_counter()
        reducer = self.reducer
        reducer.reduce()  # DDP: ONE sum over ranks of the gradients and the flags
        t5 = time.perf_counter()
        non_finite, stops, ring_votes = self.total_flags.tolist()  # identical on every rank after the reduction
        finite = non_finite == 0
        self.stop_agreed = stops > 0
        if reducer.set_rotating(ring_votes > 0):  # DDP: every rank follows rank 0's vote
            self._use_step_buffers()                        # the update's output moved
        if finite:
            self.optimizer.step(self._lr())
        elif reducer.rotating:  # skipped: the ring's next copy must still hold Phi as it is
            np.copyto(self.optimizer.out, self.optimizer.params)
        reducer.finish_update()  # DDP: with shared parameters, wait until every part is updated
        if reducer.rotating:
            reducer.rotate()     # DDP: next step reads the updated copy, writes the next slot set
            self._use_step_buffers()
            times.rotating_steps += 1
        t6 = time.perf_counter()
        if self.ring_tuner is not None:
            self.ring_vote = 1.0 if self.ring_tuner.observe(t6 - t_start) else 0.0
        times.seconds["allreduce"] += t5 - t4
        times.seconds["optimizer"] += t6 - t5
        times.steps += 1
        return finite

    def _lr(self) -> float:
        o = self.config.optim
        return learning_rate(self.step, o.lr, o.schedule, self.total_steps, o.warmup_steps, o.step_size,
                             o.gamma, o.min_lr)

    def _non_finite(self, epoch: int):
        if self.config.dist.nonfinite == "skip":
            self.skipped_steps += 1
            self.reporter.log(f"step {self.step}: non-finite loss, step skipped on every rank "
                              f"({self.skipped_steps} so far)")
            return
        raise TrainingError(f"non-finite loss at step {self.step} (epoch {epoch}): lower optim.lr, add "
                            f"optim.warmup_steps, or set dist.nonfinite = \"skip\" to skip such steps")

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> dict:
        cfg, reporter = self.config, self.reporter
        self._log_start()
        times, totals = StepTimes(), Totals()
        interval_start, samples = time.perf_counter(), 0
        last = {}
        first_epoch = self.step // self.steps_per_epoch
        epoch = first_epoch
        for epoch in range(first_epoch, cfg.train.epochs):
            permutation = epoch_permutation(self.seed, epoch, len(self.dataset.train))
            for t in range(self.step - epoch * self.steps_per_epoch if epoch == first_epoch else 0,
                           self.steps_per_epoch):
                if self.step >= self.total_steps:
                    break
                batch_indices = global_batch(permutation, t, cfg.train.global_batch)
                if not self.train_step(batch_indices, times, totals):
                    self._non_finite(epoch)
                self.step += 1
                samples += len(batch_indices)
                reporter.advance()
                self.on_step(f"step {self.step}")
                end_of_epoch = t == self.steps_per_epoch - 1 or self.step == self.total_steps
                log_due = self.step % cfg.log.every == 0 or end_of_epoch
                eval_due = (self.step % cfg.eval.every == 0) if cfg.eval.every else end_of_epoch
                if cfg.dist.check_every and self.step % cfg.dist.check_every == 0:
                    check_in_sync(self.comm, self.graph.params, self.segments, self.step)
                if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                    self.save_checkpoint()
                if log_due or eval_due:
                    rate = samples / (time.perf_counter() - interval_start)
                    last = self._report(epoch, totals, times, rate, eval_due)
                    times, totals = StepTimes(), Totals()
                    interval_start, samples = time.perf_counter(), 0
                    self.on_step(f"evaluation after step {self.step}")
                if self.stop_agreed:
                    self.save_checkpoint()
                    raise Preempted(f"stopped by a signal after step {self.step}; checkpoint written")
                if end_of_epoch:
                    self.on_epoch_end(epoch)
            if self.step >= self.total_steps:
                break
        check_in_sync(self.comm, self.graph.params, self.segments, self.step)  # DDP: agree at the end
        self.save_checkpoint()
        test = evaluate(self.model, self.dataset.test, self.comm, self.loader, cfg.eval.batch)
        self._record("test", epoch, test, {})
        reporter.log(f"test: loss {test['loss']:.4f}  error {test['error']:.4f}  "
                     f"({test['examples']} examples)")
        return {"test": test, "last": last, "step": self.step, "seed": self.seed}

    # -- checkpoints and preemption -------------------------------------------------------------

    def checkpoint_meta(self) -> dict:
        return {"step": self.step, "epoch": self.step // self.steps_per_epoch,
                "step_in_epoch": self.step % self.steps_per_epoch, "seed": self.seed,
                "world_size": self.comm.world_size, "layout": [[p.name, list(p.value.shape)] for p in
                                                               self.graph.parameters],
                "config": to_dict(self.config)}

    def optimizer_state(self) -> dict:
        """The optimizer state of the whole model (collective: parts may live on different ranks)."""
        n = self.graph.num_params
        state = self.optimizer.state_dict()
        return {name: self.reducer.assemble(value, n) if name in self.optimizer.state_names else value
                for name, value in state.items()}

    def save_checkpoint(self):
        """Collective (every rank calls it); rank 0 alone writes."""
        state = self.optimizer_state()
        if self.comm.is_root and self.out_dir:
            path = save_checkpoint(self.out_dir, self.graph.params, state, self.checkpoint_meta(),
                                   self.config.checkpoint.keep)
            self.reporter.log(f"checkpoint: {path}")

    def resume_from(self, checkpoint):
        """Continue a saved run: rank 0 read ``checkpoint`` (None on other ranks) and broadcasts it."""
        n = self.graph.num_params
        if self.comm.is_root:
            check_compatible(checkpoint, to_dict(self.config),
                             [(p.name, p.value.shape) for p in self.graph.parameters])
            for name in self.optimizer.state_names:
                if np.shape(checkpoint["optim"].get(name)) != (n,):
                    raise CheckpointError(f"checkpoint {checkpoint['path']} lacks optimizer state '{name}' "
                                          f"of {n} values")
        meta = self.comm.broadcast_obj(checkpoint["meta"] if self.comm.is_root else None)
        # DDP: every rank receives the whole arrays from rank 0 and keeps its part
        whole = self.comm.broadcast(checkpoint["params"].astype(self.graph.dtype) if self.comm.is_root
                                    else np.empty(n, self.graph.dtype))
        self.graph.params[self.part] = whole[self.part]
        for name in self.optimizer.state_names:
            whole = self.comm.broadcast(checkpoint["optim"][name].astype(self.graph.dtype) if self.comm.is_root
                                        else np.empty(n, self.graph.dtype))
            getattr(self.optimizer, name)[...] = whole[self.part]
        self.reducer.finish_update()
        saved_steps = int(checkpoint["optim"]["steps_taken"]) if self.comm.is_root else None
        self.optimizer.steps_taken = self.comm.broadcast_obj(saved_steps)
        self.step, self.seed = meta["step"], meta["seed"]
        self.config.train.seed = self.seed
        self.reporter.log(f"resumed from {checkpoint['path'] if checkpoint else 'rank 0 checkpoint'} "
                          f"at step {self.step} (saved with {meta['world_size']} ranks)")

    def _report(self, epoch, totals, times, rate, with_dev) -> dict:
        train = totals.reduced(self.comm).figures()  # DDP: the whole global batch's figures
        extra = {"samples_per_s": rate, "lr": self._lr(), **times.per_step_ms()}
        if self.reducer.depth > 1:  # the share of steps the ring rotated (the tuner paused it in the rest)
            extra["ring_rotating"] = times.rotating_steps / max(times.steps, 1)
        self._record("train", epoch, train, extra)
        line = (f"step {self.step:>7}  epoch {epoch}  train loss {train['loss']:.4f} error {train['error']:.4f}")
        figures = {"train": train}
        if with_dev and len(self.dataset.dev):
            dev = evaluate(self.model, self.dataset.dev, self.comm, self.loader, self.config.eval.batch)
            self._record("dev", epoch, dev, {})
            line += f"  dev loss {dev['loss']:.4f} error {dev['error']:.4f}"
            figures["dev"] = dev
        self.reporter.log(f"{line}  {rate:,.0f} samples/s")
        return figures

    def _record(self, split, epoch, figures, extra):
        self.reporter.metrics({"step": self.step, "epoch": epoch, "split": split, "loss": figures["loss"],
                               "error": figures["error"], "elapsed_s": self.reporter.elapsed(),
                               "samples_per_s": extra.get("samples_per_s"),
                               **{k: v for k, v in extra.items() if k != "samples_per_s"}})

    def _log_start(self):
        d, c = self.dataset, self.config
        self.reporter.log(f"data: {d.name} from {d.source}: train {len(d.train)}, dev {len(d.dev)}, "
                          f"test {len(d.test)}")
        self.reporter.log(f"model: {c.model.kind} {self.graph.num_params:,} parameters "
                          f"({', '.join(p.name for p in self.graph.parameters)})")
        ring = ""
        if self.reducer.depth > 1:
            ring = (f", a ring of {self.reducer.depth} buffer sets, "
                    f"{'paused while in place is faster' if c.dist.ring_autotune else 'always rotating'}")
        self.reporter.log(f"ranks: {self.comm.world_size} ({self.comm.backend}, gradients summed by "
                          f"{self.reducer.kind}{ring}); global batch "
                          f"{c.train.global_batch}; {self.steps_per_epoch} steps/epoch; {self.total_steps} steps; "
                          f"seed {self.seed}")
