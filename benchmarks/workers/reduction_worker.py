"""One rank of benchmarks/network_scaling.py: how long summing a model's gradient over the ranks takes,
and how many bytes it brings into this rank's host, for three ways of doing it.

  latency       an Allreduce of 8 bytes
  flat          one Allreduce of the gradient over all ranks (what ddp_edf does)
  hierarchical  reduce-scatter inside the host, an Allreduce of each 1/L piece between the hosts
                (rank i of every host with rank i of the others), allgather inside the host
  overlap       the Allreduce cut into one bucket per layer, each started (Iallreduce) as soon as
                backward has produced that layer's gradient, then all waited for

Backward's compute is emulated by sleeping (the hosts of this benchmark share 2 cores, so real GEMMs
would time the sharing): the time a core takes for the layer's GEMMs at --gflops, sliced into 1 ms
pieces with an MPI_Testall between them (what a framework can do between ops to progress the
reductions).  flat and hierarchical are timed alone; flat and overlap as a whole step (backward +
reduction), so the difference is the communication overlap hides.  Prints one JSON line (rank 0).
"""

import argparse
import json
import time

import numpy as np
from mpi4py import MPI

parser = argparse.ArgumentParser()
parser.add_argument("--layers", required=True, help="layer widths, e.g. 784,256,10; or cnn (configs/fashion_cnn.toml)")
parser.add_argument("--batch", type=int, default=128, help="examples per rank (the emulated backward)")
parser.add_argument("--gflops", type=float, default=60.0, help="one core's sgemm rate")
parser.add_argument("--reps", type=int, default=10)
parser.add_argument("--rounds", type=int, default=3)
options = parser.parse_args()

comm = MPI.COMM_WORLD
host = comm.Split_type(MPI.COMM_TYPE_SHARED)                    # the ranks of this host
peers = comm.Split(host.Get_rank(), comm.Get_rank())            # local rank i of every host
# The CNN of configs/fashion_cnn.toml: (parameters, backward FLOPs per example) of conv0, conv1, fc0, fc1;
# a convolution's backward is its weight gradient (2 P Q C k k O) and, but for the first, its input's (the same)
CNN = [(32 * 9 + 32, 2 * 784 * 9 * 32), (64 * 32 * 9 + 64, 2 * 2 * 196 * 288 * 64),
       (3136 * 128 + 128, 2 * 2 * 3136 * 128), (128 * 10 + 10, 2 * 2 * 128 * 10)]
if options.layers == "cnn":
    layers = CNN
    sizes = [n for n, _ in CNN]
else:
    widths = [int(w) for w in options.layers.split(",")]
    layers = [(i, j) for i, j in zip(widths[:-1], widths[1:])]
    sizes = [i * j + j for i, j in layers]                      # W and b of each Affine
gradient = np.ones(sum(sizes) + 2, np.float32)                  # + ddp_edf's 2 flag slots
L = host.Get_size()
assert len(set(comm.allgather(L))) == 1, "the hierarchical reduction needs as many ranks on every host"
# Backward of layer k: dW = x^T dy (2 B I J FLOPs), and dx = dy W^T (the same) except for the first layer
backward_s = [options.batch * flops / (options.gflops * 1e9) for _, flops in CNN] if options.layers == "cnn" else \
    [(2 if k else 1) * 2 * options.batch * i * j / (options.gflops * 1e9) for k, (i, j) in enumerate(layers)]


def received() -> int:
    """Bytes this host has received on its network link (the node's eth0 in the netns cluster)."""
    try:
        with open("/sys/class/net/eth0/statistics/rx_bytes") as f:
            return int(f.read())
    except OSError:
        return 0


def flat():
    comm.Allreduce(MPI.IN_PLACE, gradient, op=MPI.SUM)


flags = np.zeros(2, np.float32)


def latency():
    """An Allreduce of 8 bytes: the rounds' latency with no bandwidth term."""
    comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.SUM)


counts = [len(part) for part in np.array_split(gradient, L)]
offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
piece = np.empty(counts[host.Get_rank()], np.float32)


def hierarchical():
    host.Reduce_scatter(gradient, piece, recvcounts=counts, op=MPI.SUM)
    peers.Allreduce(MPI.IN_PLACE, piece, op=MPI.SUM)
    host.Allgatherv(piece, [gradient, counts, offsets, MPI.FLOAT])


def compute(seconds, requests=()):
    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        time.sleep(min(left, 1e-3))
        if requests:
            MPI.Request.Testall(requests)


def step_then_reduce():
    compute(sum(backward_s))
    flat()


bounds = np.cumsum([0] + sizes).tolist()


def step_overlapped():
    requests = []
    for k in reversed(range(len(layers))):          # backward: the last layer's gradient is final first
        compute(backward_s[k], requests)
        requests.append(comm.Iallreduce(MPI.IN_PLACE, gradient[bounds[k]:bounds[k + 1]], op=MPI.SUM))
    comm.Allreduce(MPI.IN_PLACE, gradient[-2:], op=MPI.SUM)          # the flags
    MPI.Request.Waitall(requests)


def timed(call):
    """Median over reps of the slowest rank's time; bytes into this host per call (with the
    barrier's and the timing's few bytes)."""
    times = []
    before = received()
    for _ in range(options.reps):
        gradient[:] = 1                             # in place, a sum would grow to inf over the reps
        comm.Barrier()
        start = time.perf_counter()
        call()
        times.append(comm.allreduce(time.perf_counter() - start, op=MPI.MAX))
    comm.Barrier()
    return float(np.median(times)), (received() - before) / options.reps


# The two sums must agree with each other (ones everywhere: every element sums to the world size)
for name, call in (("flat", flat), ("hierarchical", hierarchical)):
    gradient[:] = 1
    call()
    assert np.all(gradient == comm.Get_size()), f"{name} summed wrongly"
gradient[:] = 1
calls = {"latency": latency, "flat": flat, "hierarchical": hierarchical, "step": step_then_reduce,
         "step_overlapped": step_overlapped}
for call in calls.values():                         # warm-up: connections, buffers
    call()
results = {name: [] for name in calls}
link = {name: [] for name in calls}
for round_ in range(options.rounds):                # rotate the order round by round
    names = list(calls)[round_ % len(calls):] + list(calls)[:round_ % len(calls)]
    for name in names:
        seconds, into_host = timed(calls[name])
        results[name].append(seconds)
        link[name].append(into_host)
# one value per host: the local rank 0s report their link's bytes
host_bytes = comm.gather({name: float(np.median(v)) for name, v in link.items()} if host.Get_rank() == 0 else None)
if comm.Get_rank() == 0:
    hosts = [h for h in host_bytes if h is not None]
    print(json.dumps({
        "ranks": comm.Get_size(), "hosts": len(hosts), "parameters": sum(sizes),
        "bytes": int(gradient.nbytes), "backward_s": sum(backward_s),
        "seconds": {name: float(np.median(v)) for name, v in results.items()},
        "seconds_all": results,
        "link_bytes_per_host": {name: float(np.mean([h[name] for h in hosts])) for name in calls}}))
