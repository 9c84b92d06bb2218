"""Where a data-parallel step's time goes, and what a target rate would leave for the parts that are not GEMMs.

    .venv/bin/python benchmarks/step_budget.py [--batch 256] [--world 2] [--blocks 16] [--steps 300] [--target 1.7]

In one W-rank job, blocks of steps alternate between three loops on every rank:

  step      the real Trainer.train_step: data, forward, backward, reduction, update
  skeleton  the step's two big GEMMs (forward x W0 from the shared parameters, backward x^T dh into
            this rank's gradient slot) and the same reduction and update (ddp_edf's
            SharedMemoryAllreduce and momentum SGD on this rank's part): nothing else
  gemms     the two big GEMMs alone: every core busy, nothing exchanged

so ``step - skeleton`` is everything that is neither a big GEMM nor the exchange (the data, the
small ops, Python) and ``skeleton - gemms`` is the exchange (barriers, the sum of the slots, the
update).  Both reductions update in place (dist.ring_mb = 0), the mode the ring tuner picks in the
machine's normal state, so the three loops run the same code whatever the state; each block is
labelled by an Allreduce probe and the summary uses the blocks whose probe was < 1.5x the fastest
of the job (the normal state, if the job saw it at all: the probe is printed, ~0.12 ms normal and
~0.45 ms slow on the development VM).

Then, in one process (the other cores idle): data + forward + backward of one B/W-row shard and
its two big GEMMs, i.e. the same "rest" with no other process running and no exchange.

--target R with a comparison result (--compare; default: the highest-numbered
benchmarks/results/compare_runN.json; `make bench` passes the compare.json it just wrote): the step time that R x ChainerMN's median W-rank rate
needs, set against the parts measured here.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LOOPS = ("step", "skeleton", "gemms")


def _setup_path():
    sys.path.insert(0, str(common.ROOT))
    sys.path.insert(0, str(common.BENCH / "workers"))


def mpi_job(batch: int, blocks: int, steps: int):
    """Under mpiexec: the three loops in alternating blocks; rank 0 emits per-block medians."""
    _setup_path()
    import ddp_edf  # noqa: F401  (picks the BLAS kernels before NumPy loads)
    import numpy as np
    from ddp_edf.data import epoch_permutation
    from ddp_edf.data.sampler import global_batch
    from ddp_edf.dist.comm import make_comm
    from ddp_edf.dist.reduce import SharedMemoryAllreduce
    from ddp_edf.dist.threads import configure_blas_threads
    from ddp_edf.optim import SGD
    from ddp_edf.trainer import StepTimes, Totals, Trainer
    from ddp_edf_worker import CapturingReporter, benchmark_config, dataset_name

    comm = make_comm("mpi")
    configure_blas_threads(comm.local_size)
    dataset = comm.broadcast_obj(dataset_name() if comm.is_root else None)
    # in place (no ring, no tuner): the same code in every block whatever the machine's state
    trainer = Trainer(benchmark_config(dataset, batch, "dist.reduction=shared", "dist.ring_mb=0"), comm,
                      CapturingReporter())
    permutation = epoch_permutation(0, 0, len(trainer.dataset.train))
    batches = len(trainer.dataset.train) // batch
    counter = [0]

    def real_step():
        trainer.train_step(global_batch(permutation, counter[0] % batches, batch), StepTimes(), Totals())
        counter[0] += 1

    # The skeleton: its own shared window and optimizer, shaped like the trainer's.
    n = trainer.graph.num_params
    reducer = SharedMemoryAllreduce(comm, n + 3, np.float32, tail=3)
    if comm.local_rank == 0:
        reducer.params[:n] = trainer.graph.params
    reducer.finish_update()
    W0 = trainer.graph.parameter("fc0.W")
    size = W0.value.size
    weights, weight_grad = (a[:size].reshape(W0.value.shape) for a in (reducer.params, reducer.input))
    part = reducer.update_part(n)
    optimizer = SGD(reducer.params[part], reducer.total[part], momentum=common.MOMENTUM)
    rows = len(range(*common.shard(batch, comm.rank, comm.world_size)))
    x, _ = trainer.loader.load(trainer.dataset.train, np.arange(rows))
    x = x.copy()
    rng = np.random.default_rng(comm.rank)
    dh = (rng.standard_normal((rows, W0.value.shape[1])) * 1e-4).astype(np.float32)
    hidden = np.empty_like(dh)

    def gemms():
        np.matmul(x, weights, out=hidden)       # h = x W0
        np.matmul(x.T, dh, out=weight_grad)     # dW0 = x^T dh, into this rank's slot

    def skeleton():
        gemms()
        reducer.reduce()
        optimizer.step(common.LR)
        reducer.finish_update()

    loops = {"step": real_step, "skeleton": skeleton, "gemms": gemms}
    probe_buffer = np.zeros(common.GRADIENT, np.float32)

    for call in loops.values():
        common.median_duration(call, 100)             # warm-up
    results = {name: [] for name in LOOPS}
    probes = []
    for block in range(blocks):
        probes.append(common.allreduce_probe(comm.comm, probe_buffer, comm.MPI))
        order = LOOPS[block % 3:] + LOOPS[:block % 3]   # rotate which loop goes first
        for name in order:
            comm.comm.Barrier()
            results[name].append(common.median_duration(loops[name], steps))
    if comm.is_root:
        common.emit({"probes": probes, **results})


def one_process(batch_rows: int, repeats: int = 300, rounds: int = 7):
    """One process, other cores idle: data + forward + backward of a shard, and its two big GEMMs."""
    _setup_path()
    import ddp_edf  # noqa: F401
    import numpy as np
    from ddp_edf.data.batches import BatchLoader
    from ddp_edf.data.datasets import load_dataset
    from ddp_edf.models import build_model
    from ddp_edf_worker import dataset_name

    dataset = load_dataset(dataset_name(), "data", False, 0, 0)
    model = build_model("mlp", common.N_IN, common.N_CLASSES, [common.N_HIDDEN], "relu", seed=0)
    graph, loader = model.graph, BatchLoader(common.N_IN)
    rng = np.random.default_rng(0)
    W0 = graph.parameter("fc0.W")
    x = rng.random((batch_rows, common.N_IN), dtype=np.float32)
    dh = (rng.standard_normal((batch_rows, common.N_HIDDEN)) * 1e-4).astype(np.float32)
    hidden = np.empty_like(dh)

    shards = [rng.choice(len(dataset.train), batch_rows, replace=False) for _ in range(64)]
    turn = [0]

    def shard_step():
        turn[0] = (turn[0] + 1) % len(shards)
        model.x.value, model.y.value = loader.load(dataset.train, shards[turn[0]])
        graph.forward()
        graph.backward(model.loss, 1.0 / (2 * batch_rows))

    def gemms():
        np.matmul(x, W0.value, out=hidden)
        np.matmul(x.T, dh, out=W0.grad)

    def timed(call):
        for _ in range(30):
            call()
        values = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            values.append((time.perf_counter() - start) / repeats)
        return statistics.median(values)
    pairs = [(timed(shard_step), timed(gemms)) for _ in range(3)]
    common.emit({"shard_step": statistics.median(p[0] for p in pairs),
                 "gemms": statistics.median(p[1] for p in pairs)})


def latest_comparison() -> Path:
    """The highest-numbered benchmarks/results/compare_runN.json (else compare.json)."""
    runs = sorted(common.BENCH.glob("results/compare_run*.json"), key=lambda p: int(p.stem[len("compare_run"):]))
    return runs[-1] if runs else common.BENCH / "results" / "compare.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300, help="steps per block")
    parser.add_argument("--repeats", type=int, default=300, help="steps per timing in the one-process part")
    parser.add_argument("--target", type=float, default=1.7, help="ratio to ChainerMN's rate to budget for")
    parser.add_argument("--compare", default=str(latest_comparison()))
    parser.add_argument("--json", default=str(common.BENCH / "results" / "step_budget.json"))
    parser.add_argument("--mpi-job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-process", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mpi_job:
        return mpi_job(args.batch, args.blocks, args.steps)
    if args.one_process:
        return one_process(args.one_process, args.repeats)
    kernel = common.ddp_edf_blas_kernel()
    env = {"OPENBLAS_CORETYPE": kernel} if kernel else {}
    job = common.run_worker([common.mpiexec_for(sys.executable), "-n", str(args.world), sys.executable, __file__,
                             "--mpi-job", "--batch", str(args.batch), "--blocks", str(args.blocks),
                             "--steps", str(args.steps)], threads=1, extra_env=env)
    rows = args.batch // args.world
    alone = common.run_worker([sys.executable, __file__, "--one-process", str(rows), "--repeats", str(args.repeats)],
                              threads=1, extra_env=env)

    fastest = min(job["probes"])
    used = [k for k, p in enumerate(job["probes"]) if common.in_normal_state(p, fastest)]
    blocks = used

    def med(name):
        return statistics.median(job[name][k] for k in blocks)

    step, skeleton, gemms = med("step"), med("skeleton"), med("gemms")
    rest_alone = alone["shard_step"] - alone["gemms"]
    ms = 1e3
    print(f"{common.machine_summary()}; W = {args.world} ranks x 1 BLAS thread, global batch {args.batch} "
          f"({rows} rows per rank), in-place reduction")
    print(f"{len(used)} of {len(job['probes'])} blocks of {args.steps} steps used: Allreduce probe < 1.5 x "
          f"{fastest * ms:.2f} ms, the job's fastest (all probes: median {statistics.median(job['probes']) * ms:.2f}, "
          f"max {max(job['probes']) * ms:.2f} ms)\n")
    print("| part | ms per step |\n|---|--:|")
    print(f"| the step (Trainer.train_step) | {step * ms:.3f} |")
    print(f"| two big GEMMs, every core busy | {gemms * ms:.3f} |")
    print(f"| exchange: barriers, sum of the slots, update of my part (skeleton - GEMMs) | {(skeleton - gemms) * ms:.3f} |")
    print(f"| the rest: data, small ops, Python (step - skeleton) | {(step - skeleton) * ms:.3f} |")
    print(f"| one process alone: data + forward + backward of {rows} rows | {alone['shard_step'] * ms:.3f} |")
    print(f"| one process alone: its two big GEMMs | {alone['gemms'] * ms:.3f} |")
    print(f"| one process alone: the rest | {rest_alone * ms:.3f} |")
    record = {"machine": common.machine_summary(), "batch": args.batch, "world": args.world, "steps": args.steps,
              "blocks_used": used, "job": job, "one_process": alone,
              "median_ms": {"step": step * ms, "skeleton": skeleton * ms, "gemms": gemms * ms,
                            "exchange": (skeleton - gemms) * ms, "rest": (step - skeleton) * ms,
                            "rest_one_process": rest_alone * ms}}
    compare = Path(args.compare)
    if compare.exists():
        result = json.loads(compare.read_text())
        rates = result["rates"].get(f"chainermn@{args.world}")
        probes = result.get("probes_allreduce_ms", {})
        if rates:
            # ChainerMN's rounds that began in the normal state (the comparison's own rule), like the blocks here
            fastest_probe = min((p for v in probes.values() for p in v), default=None)
            normal = [r for r, p in zip(rates, probes.get(f"chainermn@{args.world}", []))
                      if r is not None and common.in_normal_state(p, fastest_probe)]
            record["target"] = {"ratio": args.target}
            for label, values in (("all rounds", [r for r in rates if r is not None]), ("normal-state rounds", normal)):
                if not values:
                    continue
                chainermn = statistics.median(values)
                needed = args.batch / (args.target * chainermn)
                print(f"\n{args.target}x ChainerMN's median W = {args.world} rate in {compare.name}, {label} "
                      f"({len(values)}: {chainermn:,.0f} samples/s), needs a step of {needed * ms:.3f} ms; the step "
                      f"here is {step * ms:.3f} ms ({args.batch / step:,.0f} samples/s, {args.batch / step / chainermn:.2f}x). "
                      f"With these GEMMs and this exchange the rest may take {(needed - skeleton) * ms:.3f} ms "
                      f"(here {(step - skeleton) * ms:.3f} ms, in one process alone {rest_alone * ms:.3f} ms).")
                record["target"][label.split()[0]] = {"chainermn_samples_per_s": chainermn, "rounds": len(values),
                                                      "needed_step_ms": needed * ms,
                                                      "rest_allowed_ms": (needed - skeleton) * ms}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
