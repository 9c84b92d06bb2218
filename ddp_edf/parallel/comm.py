"""One small communicator interface, two implementations: MPI (mpi4py) and serial (one process).

Buffer methods work in place on NumPy arrays (float32 or float64) and never pickle them: they map
to mpi4py's uppercase ``Allreduce``/``Bcast`` with ``MPI.IN_PLACE``.  The ``_obj`` methods move
small Python objects (a seed, a path, a verdict) and do pickle them, as mpi4py's lowercase API does.

The serial communicator is the W = 1 case of the same code path; it needs neither mpirun nor
mpi4py.  mpi4py is imported only when an MPIComm is made.  Every MPI collective runs under the
communicator's watchdog (parallel/watchdog.py): a rank left waiting ``timeout_s`` ends the job.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

from .watchdog import Watchdog, check_timeout

EXIT_INTERRUPTED = 130

# Variables a process manager sets in each rank's environment: MPICH/Hydra and Intel MPI (PMI_*),
# Open MPI (OMPI_*), PMIx launchers, and Slurm's srun with more than one task.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi(environ=os.environ) -> bool:
    """True when this process was started by mpirun, mpiexec or srun (as one of several tasks)."""
    if any(name in environ for name in LAUNCHER_VARIABLES):
        return True
    return int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in environ


def launcher_rank(environ=os.environ) -> int:
    """This process's rank as the launcher numbered it (0 when not launched by one)."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 0


def launcher_size(environ=os.environ) -> int:
    """How many processes an MPI launcher (PMI: mpiexec, srun --mpi=pmi2; Open MPI) started together, else 1."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 1


class SerialComm:
    """A world of one rank: collectives are identities (nothing to wait for, so no watchdog)."""

    rank = 0
    world_size = 1
    local_size = 1
    backend = "serial"

    def __init__(self, timeout_s: float = 300.0):
        self.set_timeout(timeout_s)

    def set_timeout(self, timeout_s: float):
        check_timeout("communicator", timeout_s)
        self.timeout_s = timeout_s

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        return buffer

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        return buffer

    def barrier(self, patience_s: float | None = None):
        pass

    def broadcast_obj(self, obj, root: int = 0):
        return obj

    def allgather_obj(self, obj) -> list:
        return [obj]

    def abort(self, code: int = 1):
        os._exit(code)


class MPIComm:
    """COMM_WORLD through mpi4py; every collective under the watchdog (``timeout_s``, 0 = off)."""

    backend = "mpi"

    def __init__(self, timeout_s: float = 300.0):
        if launched_by_mpi():
            exit_on_interrupt()
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise RuntimeError(f"MPI was requested but mpi4py cannot be imported ({error}); "
                               f"install it with pip install mpi4py mpich, or run with --dist serial") from None
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.watchdog = Watchdog(self.rank, self.abort, timeout_s)      # it checks timeout_s
        with self.watchdog.waiting("MPI_Comm_split_type"):
            # Ranks sharing this host: its cores are divided among them for BLAS threads.
            self.host_comm = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_size = self.host_comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def timeout_s(self) -> float:
        return self.watchdog.timeout_s

    def set_timeout(self, timeout_s: float):
        check_timeout("communicator", timeout_s)
        self.watchdog.timeout_s = timeout_s

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        """buffer <- sum (or "max") over ranks of buffer, in place."""
        with self.watchdog.waiting("Allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op={"sum": self.MPI.SUM, "max": self.MPI.MAX}[op])
        return buffer

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """buffer <- root's buffer, in place."""
        with self.watchdog.waiting("Bcast"):
            self.comm.Bcast(buffer, root=root)
        return buffer

    def barrier(self, patience_s: float | None = None):
        """Wait for every rank (``patience_s``: longer than the timeout, while rank 0 prepares data)."""
        with self.watchdog.waiting("Barrier", patience_s):
            self.comm.Barrier()

    def broadcast_obj(self, obj, root: int = 0):
        with self.watchdog.waiting("bcast"):
            return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj) -> list:
        with self.watchdog.waiting("allgather"):
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


def make_comm(kind: str = "auto", timeout_s: float = 300.0):
    """'mpi', 'serial', or 'auto' (MPI when launched by mpirun/mpiexec/srun, serial otherwise)."""
    if kind == "auto":
        kind = "mpi" if launched_by_mpi() else "serial"
    if kind == "mpi":
        return MPIComm(timeout_s)
    if kind == "serial":
        if launcher_size() > 1:   # it would train alone while the other ranks wait for it in MPI_Init
            MPIComm().abort_with(f"--dist serial in a job of {launcher_size()} processes started by "
                                 f"mpirun/srun: drop --dist serial, or start one process")
        return SerialComm(timeout_s)
    raise ValueError(f"unknown --dist '{kind}': choose auto, mpi or serial")


def exit_on_interrupt():
    """Ctrl-C (SIGINT, which mpiexec forwards to every rank) ends this rank at once with exit code 130,
    even while it waits inside an MPI call: whichever thread the signal reaches, Python's handler writes
    its number to the wakeup pipe (signal.set_wakeup_fd), and a thread reading that pipe exits.  When
    every rank exits with 130, so does mpiexec.  Main thread only (Python sets handlers there)."""
    if threading.current_thread() is not threading.main_thread() or \
            any(thread.name == "ddp_edf-interrupt" for thread in threading.enumerate()):
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)
    signal.signal(signal.SIGINT, lambda *_: None)      # the main thread does nothing; the reader below ends the rank

    def wait_for_interrupt():
        while os.read(read, 1) != bytes([signal.SIGINT]):     # other signals (SIGTERM: stop_signals) pass
            pass
        if launcher_rank() == 0:
            sys.stderr.write("ddp_edf: interrupted (Ctrl-C): every rank stops now; no checkpoint is written\n")
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    threading.Thread(target=wait_for_interrupt, name="ddp_edf-interrupt", daemon=True).start()
