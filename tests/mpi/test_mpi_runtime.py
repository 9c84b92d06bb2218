"""The MPI runtime the suite relies on: mpiexec from the mpich wheel and mpi4py's buffer collectives."""

import numpy as np
import pytest


@pytest.mark.mpi(min_size=2)
def test_inplace_allreduce_closed_form():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buffer = np.full(1000, comm.rank, dtype=np.float32)
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    world = comm.size
    verdict = bool(np.all(buffer == world * (world - 1) / 2))
    assert all(comm.allgather(verdict))
