"""Gradient reducers under real MPI: every kind returns the exact sum on every rank, step after step."""

import mmap
import resource

import numpy as np
import pytest

from ddp_edf.dist.comm import MPIComm
from ddp_edf.dist.reduce import InPlaceAllreduce, SharedMemoryAllreduce, make_reducer
from test_comm import agree


class SplitHosts:
    """MPIComm whose ranks are grouped into pretend hosts of `per_host` ranks (all share memory here),
    so the inter-host path of SharedMemoryAllreduce runs on one machine."""

    def __init__(self, per_host):
        self.__dict__.update(vars(MPIComm()))
        self.host_comm = self.comm.Split(self.rank // per_host, self.rank)
        self.local_rank, self.local_size = self.host_comm.Get_rank(), self.host_comm.Get_size()

    def allgather_obj(self, obj):
        return self.comm.allgather(obj)


def exact_sum_check(comm, reducer, size, steps=3):
    """Integers in float64 sum exactly: the total must equal the closed form on every rank, every step.

    After reduce(): this rank's update part and the tail are final; after finish_update(): all of it."""
    ok, message = True, ""
    for step in range(steps):
        values = np.arange(size, dtype=np.float64) * (comm.rank + 1) + step
        reducer.input[...] = values
        total = reducer.reduce()
        W = comm.world_size
        expected = np.arange(size, dtype=np.float64) * W * (W + 1) / 2 + step * W
        mine = reducer.update_part(size)
        if not (np.array_equal(total[mine], expected[mine]) and np.array_equal(reducer.tail_total, expected[size - len(reducer.tail_total):])):
            ok, message = False, f"step {step}: own part or tail wrong: {reducer.tail_total}"
        reducer.finish_update()
        if not np.array_equal(total, expected):
            ok, message = False, f"step {step}: {total[:4]} vs {expected[:4]}"
        if reducer.total is not reducer.input:
            reducer.input[...] = -1.0   # the next backward overwrites the input: the total must not change
        if not np.array_equal(total, expected):
            ok, message = False, f"step {step}: total changed when the input was overwritten"
        comm.comm.Barrier()
        reducer.rotate()
    reducer.close()
    agree(comm, ok, message)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", [1, 7, 100_003])
def test_shared_memory_sum_is_exact(size):
    comm = MPIComm()
    exact_sum_check(comm, SharedMemoryAllreduce(comm, size, np.float64, tail=min(2, size)), size)


@pytest.mark.mpi(min_size=2)
def test_shared_memory_ring_is_exact_and_rotates():
    """A ring of 3 buffer sets: sums stay exact over 7 steps; slots and parameter copies are used in turn."""
    comm = MPIComm()
    size, L = 1001, comm.local_size
    set_bytes = (L + 1) * size * 8
    reducer = SharedMemoryAllreduce(comm, size, np.float64, tail=2, ring_bytes=3 * set_bytes - 1)
    seen = []
    for _ in range(4):
        seen.append((reducer.input.ctypes.data, reducer.params.ctypes.data, reducer.next_params.ctypes.data))
        reducer.rotate()
    in_turn = reducer.depth == 3 and seen[3] == seen[0] and len({s[0] for s in seen[:3]}) == 3 and \
        all(seen[k][2] == seen[k + 1][1] for k in range(3))
    agree(comm, in_turn, f"depth {reducer.depth}: buffers not used in turn")
    exact_sum_check(comm, reducer, size, steps=7)


@pytest.mark.mpi(min_size=2)
def test_every_rank_has_the_whole_window_mapped_from_the_start():
    """Writing my gradient slot in every set of the ring right after construction faults (almost)
    no page in, on any rank: otherwise the first pass through the ring pays a fault per page."""
    comm = MPIComm()
    reducer = SharedMemoryAllreduce(comm, 100_003, np.float32, tail=2, ring_bytes=16 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pages = 0
    for _ in range(reducer.depth):
        reducer.input.fill(1.0)            # as backward does
        pages += reducer.input.nbytes // mmap.PAGESIZE
        reducer.rotate()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    reducer.close()
    agree(comm, reducer.depth > 4 and faults < pages // 20,
          f"{faults} page faults writing {pages} pages of my slots in a {reducer.depth}-deep ring")


@pytest.mark.mpi(min_size=2)
def test_in_place_allreduce_is_exact():
    comm = MPIComm()
    exact_sum_check(comm, InPlaceAllreduce(comm, 1001, np.float64, tail=2), 1001)


@pytest.mark.mpi(min_size=2)
def test_shared_memory_across_pretend_hosts():
    comm = MPIComm()
    per_host = 2 if comm.world_size % 2 == 0 else 1   # W = 4: two hosts of 2; W = 2 or 3: one rank per host
    split = SplitHosts(per_host)
    exact_sum_check(split, SharedMemoryAllreduce(split, 100_003, np.float64, tail=2), 100_003)


@pytest.mark.mpi(min_size=3)
def test_unequal_hosts_are_refused_and_auto_falls_back():
    comm = MPIComm()
    split = SplitHosts(comm.world_size - 1)        # hosts of W - 1 ranks and of 1 rank
    try:
        SharedMemoryAllreduce(split, 10, np.float64)
        refused = False
    except ValueError as error:
        refused = "same number of ranks on every host" in str(error) and "dist.reduction = 'auto'" in str(error)
    fallback = make_reducer(split, 10, np.float64, "auto")
    agree(comm, refused and isinstance(fallback, InPlaceAllreduce))
    fallback.close()


@pytest.mark.mpi(min_size=2)
def test_auto_chooses_shared_memory_on_one_host():
    comm = MPIComm()
    reducer = make_reducer(comm, 10, np.float32, "auto")
    agree(comm, reducer.kind == "shared", reducer.kind)
    reducer.close()


@pytest.mark.mpi(min_size=2)
def test_small_dev_shm_limits_the_ring_refuses_shared_and_auto_falls_back(monkeypatch):
    """As in a container with little /dev/shm: the ring shrinks to half of what is free; a window
    that does not fit in place is refused on every rank (shared) or avoided (auto), never a bus error."""
    from ddp_edf.dist import reduce
    comm = MPIComm()
    size = 100_000                                  # 0.4 MB per row in float32
    row = size * 4
    monkeypatch.setattr(reduce, "shared_memory_free", lambda path="/dev/shm": 40 * row)
    ring = make_reducer(comm, size, np.float32, "shared", ring_bytes=64 << 20)
    expected_depth = reduce.ring_depth(20 * row, (comm.local_size + 1) * row)
    ok = ring.kind == "shared" and ring.depth == expected_depth
    ring.close()
    monkeypatch.setattr(reduce, "shared_memory_free", lambda path="/dev/shm": row)
    auto = make_reducer(comm, size, np.float32, "auto", ring_bytes=64 << 20)
    ok = ok and auto.kind == "allreduce"
    try:
        make_reducer(comm, size, np.float32, "shared")
        refused = False
    except ValueError as error:
        refused = "/dev/shm has 0.4 MiB free" in str(error) and "--shm-size" in str(error)
    agree(comm, ok and refused, f"depth {expected_depth}, auto {auto.kind}, refused {refused}")
