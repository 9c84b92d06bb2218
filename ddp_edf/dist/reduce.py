"""Summing the flat gradient buffer over ranks: the one collective of every training step.

Two ways, same result (the sum of every rank's buffer, on every rank):

* ``InPlaceAllreduce``: MPI_Allreduce(IN_PLACE, SUM) of the buffer.  Works everywhere.
* ``SharedMemoryAllreduce``: the ranks of one host keep their gradient buffers side by side in one
  MPI-3 shared-memory window, so backward writes straight into memory every local rank can read:

      barrier                                   every local buffer is complete
      total[part r] = sum_q slot_q[part r]      local rank r sums its 1/L of the vector (a reduce-scatter
                                                by plain loads, no message copies)
      tail_total = sum_q slot_q[tail]           every rank sums the few trailing values (flags) itself
      Allreduce(total[part r]), (tail_total)    only with several hosts: among the ranks that have the
                                                same local rank, so each inter-host message is 1/L long

  The window also holds ONE copy of the parameters per host (``params``), and each local rank runs
  the optimizer on its own part only (``update_part``; as in ZeRO stage 1, optimizer state is 1/L per
  rank), reading only its own part of ``total``; ``finish_update()`` (a barrier) then makes the whole
  updated vector visible to every local rank.  So a step has two barriers and no message copies on a
  host.  When ``reduce()`` returns, this rank's part of ``total`` and ``tail_total`` are final; the
  rest of ``total`` is final after ``finish_update()``.  No rank writes ``total`` again before every
  rank has passed the next step's first barrier, i.e. finished its update.  ``assemble()`` gathers
  the parts of optimizer state for a checkpoint; ``update_part`` tells each rank what to load when
  resuming.

  A ring of buffers (``ring_bytes``): a core writing a cache line that another core still holds must
  first have that copy invalidated, and on some machines (VMs whose vCPUs sit on different L3
  domains, multi-socket hosts) that costs several times more than reading a line another core
  wrote.  In place, every step does exactly that: backward rewrites the slot the other ranks read
  one step earlier, the update rewrites parameters they all read in forward.  So the window holds
  ``depth`` sets of (slots, parameters) used in turn: step t reads parameters copy t and writes its
  gradients to slot set t, the update writes copy t + 1, and ``rotate()`` moves on.  By the time a
  set comes round again, the other cores have long evicted it (depth x set size >= ring_bytes:
  dist.ring_mb = 64 MiB by default, twice a 32 MB L3, but at most half of the free /dev/shm).
  Measured on the development VM: 13-20% faster steps in its slow state, 3-10% slower in its
  normal one (the larger cost since the optimizer's one-pass update, which in place gains most
  from; docs/performance.md).  Same arithmetic, same bits.  ``set_rotating(False)`` pauses the ring
  for a step (the update writes ``params`` in place, the next step reuses the slot set), so a
  tuner can pick, step by step, whichever mode the machine currently favours (ring_tuner.py).

This module sees flat NumPy arrays only, never a graph or an op.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from ..data.sampler import shard_bounds

KINDS = ("auto", "allreduce", "shared")
MAX_RING_DEPTH = 64


class InPlaceAllreduce:
    """``input`` and ``total`` are one private buffer; reduce() sums it over ranks in place."""

    kind = "allreduce"
    params = next_params = None   # every rank keeps its own parameters and updates all of them
    depth = 1
    turn = 0          # no ring: always the same buffers
    rotating = False

    def __init__(self, comm, size: int, dtype, tail: int = 0):
        self.comm = comm
        self.input = np.zeros(size, dtype=dtype)
        self.total = self.input
        self.tail_total = self.total[size - tail:]   # the sum of the trailing `tail` values

    def reduce(self) -> np.ndarray:
        self.comm.allreduce(self.input)
        return self.total

    def update_part(self, n: int) -> slice:
        """The part of an n-vector (parameters, optimizer state) this rank updates: all of it."""
        return slice(0, n)

    def finish_update(self):
        pass

    def set_rotating(self, rotating: bool) -> bool:
        return False

    def rotate(self):
        pass

    def assemble(self, part: np.ndarray, n: int) -> np.ndarray:
        """The whole n-vector of which this rank holds ``update_part(n)``: here the part is the whole."""
        return part

    def close(self):
        pass


class SharedMemoryAllreduce:
    """Per-host sums in an MPI-3 shared window, then (several hosts) one Allreduce per part across hosts."""

    kind = "shared"

    def __init__(self, comm, size: int, dtype, tail: int = 0, ring_bytes: int = 0):
        MPI = comm.MPI
        self.host = comm.host_comm
        local_rank, local_size = self.host.Get_rank(), self.host.Get_size()
        hosts = comm.comm.allreduce(1 if local_rank == 0 else 0)
        if comm.world_size != hosts * local_size or len(set(comm.allgather_obj(local_size))) != 1:
            raise ValueError("dist.reduction = 'shared' needs the same number of ranks on every host; "
                             "set dist.reduction = 'auto' (falls back to Allreduce) or 'allreduce'")
        dtype = np.dtype(dtype)
        set_rows = local_size + 1  # one set: a gradient slot per local rank and the host's parameters
        # The host's first rank decides from its free shared memory; a verdict is the same on every local rank.
        plan = None
        if local_rank == 0:
            try:
                plan = window_depth(ring_bytes, local_size, size * dtype.itemsize, shared_memory_free())
            except ValueError as error:
                plan = str(error)
        plan = self.host.bcast(plan)
        if isinstance(plan, str):
            raise ValueError(plan)
        self.depth = plan
        rows = self.depth * set_rows + 1  # the sets, then the total
        nbytes = rows * size * dtype.itemsize if local_rank == 0 else 0
        self.window = MPI.Win.Allocate_shared(nbytes, dtype.itemsize, comm=self.host)
        memory, _ = self.window.Shared_query(0)
        table = np.ndarray(buffer=memory, dtype=dtype, shape=(rows, size))
        if local_rank == 0:
            table.fill(0)  # touch every page now, not during the first steps
        self.host.Barrier()
        if local_rank != 0:
            map_every_page(table)  # and map it into this process too (see map_every_page)
        self._slot_sets = [table[k * set_rows:k * set_rows + local_size] for k in range(self.depth)]
        self._param_copies = [table[k * set_rows + local_size] for k in range(self.depth)]
        self.total = table[-1]
        self.local_rank = local_rank
        self.turn = 0
        self.rotating = self.depth > 1
        self._point()
        self.part = slice(*shard_bounds(size, local_rank, local_size))  # contiguous, sizes differ by <= 1
        self.tail = slice(size - tail, size)
        self.tail_total = np.zeros(tail, dtype=dtype)   # private: every rank sums the tail itself
        # Ranks with the same local rank on different hosts: they Allreduce the same part.
        self.across = comm.comm.Split(local_rank, comm.rank) if hosts > 1 else None
        self.MPI = MPI
        self.host.Barrier()

    def reduce(self) -> np.ndarray:
        self.host.Barrier()                       # every slot on this host is complete
        part = self.part
        # total[p] = slot_0[p] + slot_1[p] + ... in local-rank order (the same order on every host)
        sum_rows(self.slots[:, part], out=self.total[part])
        sum_rows(self.slots[:, self.tail], out=self.tail_total)
        if self.across is not None:
            self.across.Allreduce(self.MPI.IN_PLACE, self.total[part], op=self.MPI.SUM)
            self.across.Allreduce(self.MPI.IN_PLACE, self.tail_total, op=self.MPI.SUM)
        return self.total

    def _point(self):
        """This turn's buffers: ``input`` (my slot), ``params`` (read in forward), ``next_params`` (the update's output)."""
        self.slots = self._slot_sets[self.turn]
        self.input = self.slots[self.local_rank]
        self.params = self._param_copies[self.turn]
        self.next_params = self._param_copies[(self.turn + 1) % self.depth] if self.rotating else self.params

    def set_rotating(self, rotating: bool) -> bool:
        """Between reduce() and the update, the same on every local rank: should this step's update
        write the next copy (and rotate() move on), or overwrite ``params`` in place (and the next
        step reuse this turn's buffers)?  Without a ring it is always in place.  True if
        ``next_params`` changed."""
        rotating = bool(rotating) and self.depth > 1
        if rotating == self.rotating:
            return False
        self.rotating = rotating
        self._point()
        return True

    def rotate(self):
        """After finish_update(): the updated copy becomes ``params``, the next slot set ``input``
        (nothing moves while the ring is paused)."""
        if self.rotating:
            self.turn = (self.turn + 1) % self.depth
            self._point()

    def update_part(self, n: int) -> slice:
        """This local rank's part of an n-vector (n <= size: the parameters, without trailing slots)."""
        return slice(min(self.part.start, n), min(self.part.stop, n))

    def finish_update(self):
        """Barrier after each rank wrote its part of ``next_params``: the whole vector is now current."""
        self.host.Barrier()

    def assemble(self, part: np.ndarray, n: int) -> np.ndarray:
        """Collective: a copy of the whole n-vector whose ``update_part(n)`` each local rank holds in ``part``.

        The parts are staged in ``total``, which is free between a step's update and the next reduce()."""
        self.host.Barrier()
        self.total[self.update_part(n)] = part
        self.host.Barrier()
        whole = self.total[:n].copy()
        self.host.Barrier()                       # nobody reuses total before everyone has copied it
        return whole

    def close(self):
        if self.window is not None:
            self.host.Barrier()
            self.window.Free()
            self.window = None
            if self.across is not None:
                self.across.Free()


def map_every_page(table: np.ndarray):
    """Write each page of ``table`` once (x += 0: no value changes), so this process's page table maps
    all of it now.  Otherwise every page costs a fault (~1 us) on its first use, and a 64 MiB ring is
    16k faults spread over the first pass through it: 2.0 instead of 1.4 ms per step for the first
    28 steps on the development VM -- enough to make the ring tuner's first probe prefer in place."""
    flat = table.reshape(-1)
    flat[::max(1, mmap.PAGESIZE // flat.itemsize)] += 0


def sum_rows(rows: np.ndarray, out: np.ndarray):
    """out = rows[0] + rows[1] + ... in row order.  Elementwise adds: for two rows this is twice as
    fast as np.sum(rows, axis=0) (15 vs 30 us for 100k float32), with the same result."""
    if len(rows) == 1:
        np.copyto(out, rows[0])
        return
    np.add(rows[0], rows[1], out=out)
    for row in rows[2:]:
        out += row


def ring_depth(ring_bytes: int, set_bytes: int) -> int:
    """How many buffer sets of ``set_bytes`` make a ring of at least ``ring_bytes`` (1: in place)."""
    return max(1, min(MAX_RING_DEPTH, -(-ring_bytes // max(set_bytes, 1))))


def shared_memory_free(path: str = "/dev/shm") -> int | None:
    """Bytes free where MPICH puts shared windows (None: no such file system to ask)."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def in_place_bytes(local_size: int, row_bytes: int) -> int:
    """The window without a ring: one slot per local rank, the parameters, the total."""
    return (local_size + 2) * row_bytes


def window_depth(ring_bytes: int, local_size: int, row_bytes: int, free_bytes: int | None) -> int:
    """The ring depth for a host of ``local_size`` ranks and vectors of ``row_bytes``, given the free
    shared memory: sets of (local_size + 1) rows, plus the total.

    The ring takes at most half of what is free (other jobs and MPI itself need some; Docker gives
    64 MB); a window that does not fit even in place is refused with the fix, instead of the bus
    error that touching memory beyond a full /dev/shm would raise."""
    set_bytes = (local_size + 1) * row_bytes
    if free_bytes is None:
        return ring_depth(ring_bytes, set_bytes)
    needed = in_place_bytes(local_size, row_bytes)
    if needed > free_bytes:
        raise ValueError(f"dist.reduction = 'shared' needs {needed / 2**20:.1f} MiB of shared memory but /dev/shm "
                         f"has {free_bytes / 2**20:.1f} MiB free: give it more (docker run --shm-size=1g) or set "
                         f"dist.reduction = 'allreduce'")
    return ring_depth(min(ring_bytes, free_bytes // 2), set_bytes)


def make_reducer(comm, size: int, dtype, kind: str = "auto", tail: int = 0, ring_bytes: int = 0):
    """The gradient reducer for ``comm``: 'shared' memory within hosts, plain 'allreduce', or 'auto'.

    auto = shared when several ranks share a host, every host has as many ranks and room in /dev/shm
    for the window; else allreduce.
    ``tail``: trailing values of the buffer (flags) whose sum every rank needs, in ``tail_total``.
    ``ring_bytes``: with shared memory, rotate through buffer sets totalling at least this much.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown reduction '{kind}': choose one of {list(KINDS)}")
    if comm.world_size == 1 or kind == "allreduce":
        return InPlaceAllreduce(comm, size, dtype, tail)
    if kind == "auto":
        sizes = comm.allgather_obj(comm.local_size)
        if min(sizes) < 2 or len(set(sizes)) != 1:
            return InPlaceAllreduce(comm, size, dtype, tail)
        # ... and only if the window fits in place on every host (else one host would refuse it)
        free = shared_memory_free() if comm.local_rank == 0 else None
        needed = in_place_bytes(comm.local_size, size * np.dtype(dtype).itemsize)
        if not all(comm.allgather_obj(free is None or needed <= free)):
            return InPlaceAllreduce(comm, size, dtype, tail)
    return SharedMemoryAllreduce(comm, size, dtype, tail, ring_bytes)
