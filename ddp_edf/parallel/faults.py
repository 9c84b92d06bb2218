"""Never hang: an exception on any rank ends the whole job, and so does a step that never completes.

* ``run_or_abort`` runs the program; an exception on ANY rank prints that rank's traceback (each
  line prefixed with its rank) and calls MPI Abort, which ends every rank of the job within
  seconds, even those blocked in a collective waiting for the failed one.
* ``Watchdog``: if no step completes within ``timeout_s``, the rank dumps the Python stacks of
  all its threads (faulthandler) and aborts the job, instead of burning an allocation in a deadlock.
* ``abort_on_uncaught_exception``: the same for a user's script that trains through the Python API
  (as ``python -m mpi4py`` would do, which users forget).
* Ctrl-C: under MPI, SIGINT gets its default action (terminate at once), which works even inside
  a blocking MPI call where a Python KeyboardInterrupt would never be raised.
* ``stop_signals``: SIGTERM and SIGUSR1 (preemption, a time limit) only set a flag, so every rank
  can finish its step, agree, and checkpoint.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
import threading
import time
import traceback

from .comm import make_comm

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


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
    if comm.world_size > 1:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
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


def communicator(kind: str = "auto"):
    """The communicator of this process: MPI when mpirun/mpiexec/srun started it, else one process
    ('mpi' or 'serial' force one).  From now on an exception that nobody catches, on any rank, ends
    the whole job (as ``python -m mpi4py`` would) instead of leaving the other ranks waiting: make
    it first thing in a script run under mpirun."""
    comm = make_comm(kind)
    abort_on_uncaught_exception(comm)
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


class WatchdogFired(RuntimeError):
    """No progress for longer than the timeout: the run ends with an error even if it then went on."""


class Watchdog:
    """Abort the job when ``kick()`` has not been called for ``timeout_s`` seconds (0 = off) while
    inside ``with watchdog:`` (re-entrant: the outermost ``with`` starts and stops the watching)."""

    def __init__(self, comm, timeout_s: float, poll_s: float = 1.0, grace_s: float = 3.0):
        self.comm, self.timeout_s, self.poll_s, self.grace_s = comm, timeout_s, poll_s, grace_s
        self.last_kick, self.what, self.depth, self.fired = time.monotonic(), "start", 0, None
        self._stop = threading.Event()

    def __enter__(self):
        self.depth += 1
        if self.depth == 1:
            self.fired = None
        if self.depth == 1 and self.timeout_s > 0:
            self.kick("start")
            self._stop.clear()
            threading.Thread(target=self._watch, name="ddp_edf-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exception):
        self.depth -= 1
        if self.depth == 0:
            self._stop.set()
            if self.fired and not exception[0]:
                raise WatchdogFired(self.fired)

    def kick(self, what: str = ""):
        self.last_kick = time.monotonic()
        self.what = what

    def _watch(self):
        stop = self._stop
        while not stop.wait(min(self.poll_s, self.timeout_s)):
            idle = time.monotonic() - self.last_kick
            if idle > self.timeout_s:
                self._fire(idle)
                return

    def _fire(self, idle: float):
        rank = self.comm.rank
        self.fired = (f"watchdog: no progress for {idle:.0f} s (timeout {self.timeout_s:g} s: dist.timeout_s, "
                      f"or the Trainer's timeout_s; last: {self.what}); a rank is stuck or dead")
        sys.stderr.write(f"[rank {rank}] ddp_edf: {self.fired}. Stacks of rank {rank}:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)   # the process's own stderr
        sys.stderr.flush()
        time.sleep(self.grace_s)  # the other ranks' watchdogs fire about now: let them dump their stacks too
        self.comm.abort(EXIT_FAILURE)
