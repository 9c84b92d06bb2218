"""One small communicator interface, two implementations: MPI (mpi4py) and serial (one process).

Buffer methods work in place on NumPy arrays (float32 or float64) and never pickle them: they map
to mpi4py's uppercase ``Allreduce``/``Bcast`` with ``MPI.IN_PLACE``.  The ``_obj`` methods move
small Python objects (a seed, a path, a verdict) and do pickle them, as mpi4py's lowercase API does.

The serial communicator is the W = 1 case of the same code path; it needs neither mpirun nor
mpi4py.  mpi4py is imported only when an MPIComm is made.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

# Variables a process manager sets in each rank's environment: MPICH/Hydra and Intel MPI (PMI_*),
# Open MPI (OMPI_*), PMIx launchers, and Slurm's srun with more than one task.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi(environ=os.environ) -> bool:
    """True when this process was started by mpirun, mpiexec or srun (as one of several tasks)."""
    if any(name in environ for name in LAUNCHER_VARIABLES):
        return True
    return int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in environ


def launcher_size(environ=os.environ) -> int:
    """How many processes an MPI launcher (PMI: mpiexec, srun --mpi=pmi2; Open MPI) started together, else 1."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 1


class SerialComm:
    """A world of one rank: collectives are identities."""

    rank = 0
    world_size = 1
    local_size = 1
    backend = "serial"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        return buffer

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        return buffer

    def barrier(self):
        pass

    def broadcast_obj(self, obj, root: int = 0):
        return obj

    def allgather_obj(self, obj) -> list:
        return [obj]

    def abort(self, code: int = 1):
        os._exit(code)


class MPIComm:
    """COMM_WORLD through mpi4py."""

    backend = "mpi"

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise RuntimeError(f"MPI was requested but mpi4py cannot be imported ({error}); "
                               f"install it with pip install mpi4py mpich, or run with --dist serial") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        # Ranks sharing this host: its cores are divided among them for BLAS threads.
        self.host_comm = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_size = self.host_comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        """buffer <- sum (or "max") over ranks of buffer, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op={"sum": self.MPI.SUM, "max": self.MPI.MAX}[op])
        return buffer

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """buffer <- root's buffer, in place."""
        self.comm.Bcast(buffer, root=root)
        return buffer

    def barrier(self):
        self.comm.Barrier()

    def broadcast_obj(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj) -> list:
        return self.comm.allgather(obj)

    def abort_with(self, message: str, code: int = 1):
        """Print ``message`` and end every rank of the job."""
        print(f"[rank {self.rank}] ddp_edf: error: {message}", file=sys.stderr)
        time.sleep(0.5)   # let the launcher forward the message before Abort tears the job down
        self.abort(code)

    def abort(self, code: int = 1):
        """End every rank of the job now (MPI_Abort), e.g. after an exception on this rank."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def make_comm(kind: str = "auto"):
    """'mpi', 'serial', or 'auto' (MPI when launched by mpirun/mpiexec/srun, serial otherwise)."""
    if kind == "auto":
        kind = "mpi" if launched_by_mpi() else "serial"
    if kind == "mpi":
        return MPIComm()
    if kind == "serial":
        if launcher_size() > 1:   # it would train alone while the other ranks wait for it in MPI_Init
            MPIComm().abort_with(f"--dist serial in a job of {launcher_size()} processes started by "
                                 f"mpirun/srun: drop --dist serial, or start one process")
        return SerialComm()
    raise ValueError(f"unknown --dist '{kind}': choose auto, mpi or serial")
