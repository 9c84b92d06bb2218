"""Never hang: an exception on any rank ends the whole job.

* ``run_or_abort`` runs the program; an exception on ANY rank prints that rank's traceback (each
  line prefixed with its rank) and calls MPI Abort, which ends every rank of the job within
  seconds, even those blocked in a collective waiting for the failed one.
* ``communicator()`` makes the communicator of a user's script and does the same for it (as
  ``python -m mpi4py`` would do, which users forget), with the watchdog of every collective
  (parallel/watchdog.py) and Ctrl-C ending every rank with exit code 130 (parallel/comm.py).
* ``stop_signals``: SIGTERM and SIGUSR1 (preemption, a time limit) only set a flag, so every rank
  can finish its step, agree, and checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback

from .comm import EXIT_INTERRUPTED, make_comm
from .threads import configure_blas_threads

EXIT_FAILURE = 1


def print_error(comm, error: BaseException, with_traceback: bool):
    prefix = f"[rank {comm.rank}] " if comm.world_size > 1 else ""
    if with_traceback:
        lines = "".join(traceback.format_exception(type(error), error, error.__traceback__)).splitlines()
        sys.stderr.write("".join(f"{prefix}{line}\n" for line in lines))
    sys.stderr.write(f"{prefix}ddp_edf: error: {error}\n")
    sys.stderr.flush()


def launch(kind: str, program, expected_errors=(), collective_errors=()) -> int:
    """Make the communicator (--dist ``kind``) and return ``program(comm)``'s exit code via run_or_abort.

    A communicator that cannot be made (mpi4py missing, ...) is a one-line error and exit code 1."""
    try:
        comm = make_comm(kind)
    except RuntimeError as error:
        print(f"ddp_edf: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return run_or_abort(comm, lambda: program(comm), expected_errors, collective_errors)


def run_or_abort(comm, main, expected_errors=(), collective_errors=()):
    """Return main()'s exit code; on an exception print it and end the job (MPI Abort when W > 1).

    ``expected_errors`` (bad config, missing data, ...) print one line, no traceback;
    ``collective_errors`` are raised identically on every rank, so rank 0 prints them and aborts; another
    rank prints its own only if rank 0 has not ended the job 2 s later (rank 0 never met the error).
    """
    try:
        return main()
    except KeyboardInterrupt:
        sys.stderr.write("ddp_edf: interrupted (Ctrl-C); no checkpoint is written\n")
        code = EXIT_INTERRUPTED
    except BaseException as error:  # noqa: BLE001  (any failure must end the job)
        if isinstance(error, SystemExit):
            if not error.code:
                return 0
            code = error.code if isinstance(error.code, int) else EXIT_FAILURE
        else:
            code = EXIT_FAILURE
            if isinstance(error, collective_errors) and not comm.is_root:
                time.sleep(2.0)  # rank 0 reports it and aborts the job; give it time to be heard
            # still running: rank 0 did not meet this error (a config file that differs on this host)
            print_error(comm, error, with_traceback=not isinstance(error, expected_errors))
            if comm.world_size > 1:
                time.sleep(0.5)  # let the launcher forward the message before Abort tears the job down
    if comm.world_size > 1:
        comm.abort(code)
    return code


def communicator(kind: str = "auto", timeout_s: float = 300.0, blas_threads: int = 0):
    """The communicator of this process: MPI when mpirun/mpiexec/srun started it, else one process
    ('mpi' or 'serial' force one).  Make it first thing in a script run under mpirun: from now on an
    exception that nobody catches, on any rank, ends the whole job (as ``python -m mpi4py`` would)
    instead of leaving the other ranks waiting; a rank that waits in a collective for ``timeout_s``
    ends it too (0: never); Ctrl-C ends every rank (exit code 130).  BLAS gets ``blas_threads`` threads
    (0: the host's cores divided among the ranks on it, unless OMP_NUM_THREADS & co. are set)."""
    comm = make_comm(kind, timeout_s)
    abort_on_uncaught_exception(comm)
    comm.blas_note = configure_blas_threads(comm.local_size, blas_threads)
    return comm


def abort_on_uncaught_exception(comm):
    """Under MPI with several ranks: an exception nobody catches prints its traceback, prefixed with
    the rank, and aborts the whole job (instead of this rank exiting while the others wait forever)."""
    if comm.world_size == 1:
        return

    def hook(kind, error, trace):
        print_error(comm, error.with_traceback(trace), with_traceback=True)
        time.sleep(0.5)   # let the launcher forward the message before Abort tears the job down
        comm.abort(EXIT_FAILURE)
    sys.excepthook = hook


@contextlib.contextmanager
def stop_signals(request_stop, signals=(signal.SIGTERM, signal.SIGUSR1)):
    """While inside: each of ``signals`` calls ``request_stop()`` instead of ending the process.
    (Python allows signal handlers only in the main thread; elsewhere the signals keep their action.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda *_: request_stop()) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
