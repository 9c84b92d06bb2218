"""The communicator under real MPI, against closed forms.  Verdicts are agreed before asserting."""

import numpy as np
import pytest

from ddp_edf.parallel.comm import MPIComm, launched_by_mpi
from ddp_edf.parallel.data_parallel import OutOfSyncError, check_in_sync


def agree(comm, ok: bool, message: str = ""):
    """Every rank learns every rank's verdict, so all fail together and none waits in a collective."""
    verdicts = comm.allgather_obj((ok, f"rank {comm.rank}: {message}"))
    failures = [m for good, m in verdicts if not good]
    assert not failures, failures


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_allreduce_sums_in_place(dtype):
    comm = MPIComm()
    W, r = comm.world_size, comm.rank
    buffer = np.full(100_003, r, dtype=dtype)
    before = buffer.ctypes.data
    comm.allreduce(buffer)
    agree(comm, bool(np.all(buffer == W * (W - 1) / 2)) and buffer.ctypes.data == before and buffer.dtype == dtype,
          f"sum {buffer[:3]}")


@pytest.mark.mpi(min_size=2)
def test_broadcast_and_objects():
    comm = MPIComm()
    buffer = np.full(10, float(comm.rank), np.float32)
    comm.broadcast(buffer, root=0)
    seed = comm.broadcast_obj(1234 if comm.is_root else None)
    gathered = comm.allgather_obj(comm.rank)
    comm.barrier()
    agree(comm, bool(np.all(buffer == 0)) and seed == 1234 and gathered == list(range(comm.world_size)))


@pytest.mark.mpi(min_size=2)
def test_launch_detection_and_host_ranks():
    comm = MPIComm()
    agree(comm, launched_by_mpi() and 1 <= comm.local_size <= comm.world_size and comm.host_comm.Get_rank() < comm.local_size)


@pytest.mark.mpi(min_size=2)
def test_check_in_sync_names_the_first_differing_rank_and_segment():
    comm = MPIComm()
    params = np.arange(10, dtype=np.float32)
    segments = [("fc0.W", 0, 6), ("fc0.b", 6, 10)]
    check_in_sync(comm, params, segments, step=1)
    last = comm.world_size - 1
    if comm.rank == last:
        params[7] += 1e-6
    try:
        check_in_sync(comm, params, segments, step=2)
        agree(comm, False, "divergence not detected")
    except OutOfSyncError as error:
        agree(comm, f"rank {last} differs from rank 0 first in 'fc0.b'" in str(error), str(error))


def gradient_like_terms(count=11, size=3001, seed=4):
    """Terms of three segments of very different scales, with zeros and exact ties in the mix."""
    rng = np.random.default_rng(seed)
    terms = rng.standard_normal((count, size)).astype(np.float32) * np.float32(1e-3)
    terms[:, 1000:2000] *= np.float32(1e6)
    terms[:, 2000:2500] = 0
    terms[3, 5] = -terms[4, 5]
    return terms


@pytest.mark.mpi(min_size=2)
def test_exact_sum_gives_the_same_bits_however_the_terms_are_spread():
    from ddp_edf.data import shard_bounds
    from ddp_edf.parallel.comm import SerialComm
    from ddp_edf.parallel.exact_sum import ExactSum
    comm = MPIComm()
    terms = gradient_like_terms()
    results = []
    for communicator, mine in ((comm, range(*shard_bounds(len(terms), comm.rank, comm.world_size))),
                               (SerialComm(), range(len(terms)))):
        exact, out, flags = ExactSum(communicator, terms.shape[1]), np.empty(3001, np.float32), np.zeros(2)
        for t in mine:
            exact.add(terms[t])
        flags[:] = (0, comm.rank == 1)
        exact.allreduce(out, flags, total_terms=len(terms))
        results.append((out, flags.tolist()))
    (parallel, flags), (serial, _) = results
    agree(comm, np.array_equal(parallel, serial) and flags == [0, 1], f"flags {flags}")


@pytest.mark.mpi(min_size=2)
def test_a_nan_on_one_rank_reaches_every_rank_without_a_hang():
    """MPI's MAX may drop a NaN: the exact sum sends inf instead, so every rank takes the same branch."""
    from ddp_edf.parallel.exact_sum import ExactSum
    comm = MPIComm()
    exact, out, flags = ExactSum(comm, 100), np.empty(100, np.float32), np.zeros(2)
    term = np.ones(100, np.float32)
    term[3] = np.nan if comm.rank == comm.world_size - 1 else 1
    exact.add(term)
    exact.allreduce(out, flags, total_terms=comm.world_size)
    comm.allreduce(np.ones(5))                  # the ranks still pair their collectives
    agree(comm, bool(np.isnan(out).all()) and flags[0] == 1, f"out {out[:3]}, flags {flags}")
