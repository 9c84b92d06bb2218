"""The communicator under real MPI, against closed forms.  Verdicts are agreed before asserting."""

import numpy as np
import pytest

from ddp_edf.parallel.comm import MPIComm, launched_by_mpi
from ddp_edf.parallel.agreement import OutOfSyncError, check_in_sync


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


def reduce_terms(reducer, terms, figures, stop):
    """Each of this rank's chunks of a batch of len(terms) (chunk 1) adds its term; then the reduction."""
    grads = reducer.gradient_buffer(terms.shape[1])
    for lo, _ in reducer.pieces(len(terms)):
        grads[:] = terms[lo]
        reducer.add(grads, *figures[lo])
    figures = reducer.reduce(stop)
    return grads, figures


@pytest.mark.mpi(min_size=2)
def test_exact_sum_gives_the_same_bits_however_the_terms_are_spread():
    from threadpoolctl import threadpool_limits
    from ddp_edf import ExactSum
    from ddp_edf.parallel.comm import SerialComm
    comm = MPIComm()
    terms = gradient_like_terms()
    figures = np.random.default_rng(3).uniform(0, 30, (len(terms), 2))
    with threadpool_limits(limits=1, user_api="blas"):
        parallel, (loss, errors, stop) = reduce_terms(ExactSum(comm, chunk=1), terms, figures, comm.rank == 1)
        serial, serial_figures = reduce_terms(ExactSum(SerialComm(), chunk=1), terms, figures, False)
    agree(comm, np.array_equal(parallel, serial) and (loss, errors) == serial_figures[:2] and stop,
          f"figures {loss, errors, stop} vs {serial_figures}")


@pytest.mark.mpi(min_size=2)
def test_a_nan_on_one_rank_reaches_every_rank_without_a_hang():
    """MPI's MAX may drop a NaN: the exact sum sends inf instead, so every rank takes the same branch."""
    from threadpoolctl import threadpool_limits
    from ddp_edf import ExactSum
    comm = MPIComm()
    terms = np.ones((comm.world_size, 100), np.float32)
    terms[-1, 3] = np.nan
    with threadpool_limits(limits=1, user_api="blas"):
        out, (loss, _, _) = reduce_terms(ExactSum(comm, chunk=1), terms, np.zeros((comm.world_size, 2)), False)
    comm.allreduce(np.ones(5))                  # the ranks still pair their collectives
    agree(comm, bool(np.isnan(out).all()) and np.isnan(loss), f"out {out[:3]}, loss {loss}")
