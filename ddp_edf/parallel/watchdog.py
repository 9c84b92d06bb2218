"""The watchdog: a rank that waits in one collective call for longer than ``timeout_s`` ends the job.

Every collective the library makes (communicator methods) runs inside ``watchdog.waiting(call)``.
When a rank skips a call the others make (a script that calls ``fit`` on rank 0 only), is stuck in
its own work, or died, the ranks that did make the call wait there; after ``timeout_s`` each prints
one line naming the call and where the library made it, dumps its stacks, and aborts the job.  A
thread checks once a second; the watched call itself costs two assignments.
"""

from __future__ import annotations

import contextlib
import faulthandler
import sys
import threading
import time
from pathlib import Path

from ..errors import check_option

PACKAGE = Path(__file__).resolve().parents[1]
EXIT_FAILURE = 1


def check_timeout(owner: str, timeout_s):
    check_option(owner, "timeout_s", timeout_s, isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
                 and (timeout_s == 0 or timeout_s >= 1), "must be 0 (off) or at least 1 second")


class Watchdog:
    def __init__(self, rank: int, abort, timeout_s: float = 300.0, poll_s: float = 1.0, grace_s: float = 2.0):
        check_timeout("communicator", timeout_s)
        self.rank, self.abort, self.timeout_s, self.poll_s, self.grace_s = rank, abort, timeout_s, poll_s, grace_s
        self.deadline = None          # while a call is watched: when this rank gives up waiting
        self.call, self.thread_id, self.started = "", None, 0.0
        self._watcher = None

    @contextlib.contextmanager
    def waiting(self, call: str, patience_s: float | None = None):
        """Watch the collective ``call`` made inside; ``patience_s`` (> timeout_s) for a call that waits for
        rank 0's own long work (a download)."""
        if self.timeout_s and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="ddp_edf-watchdog", daemon=True)
            self._watcher.start()
        self.call, self.thread_id, self.started = call, threading.get_ident(), time.monotonic()
        self.deadline = self.started + max(self.timeout_s, patience_s or 0) if self.timeout_s else None
        try:
            yield
        finally:
            self.deadline = None

    def _watch(self):
        while True:
            time.sleep(min(self.poll_s, self.timeout_s or self.poll_s))
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self._fire()
                return

    def _fire(self):
        waited = time.monotonic() - self.started
        where = call_path(sys._current_frames().get(self.thread_id))
        sys.stderr.write(f"[rank {self.rank}] ddp_edf: error: watchdog: waited {waited:.0f} s in {self.call} "
                         f"({where}), which the other ranks did not join: one skipped this call, is stuck, or "
                         f"died (timeout {self.timeout_s:g} s: dist.timeout_s, communicator(timeout_s=...)). "
                         f"Stacks of rank {self.rank}:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        sys.stderr.flush()
        time.sleep(self.grace_s)   # the other waiting ranks fire about now: let them print too
        self.abort(EXIT_FAILURE)


def call_path(frame, depth: int = 4) -> str:
    """'Trainer.fit > check_agreement, from mine.py:12': the library functions (innermost ``depth``) that
    made the call, and the line outside the library that called them."""
    inside, caller, seen = [], None, False
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if PACKAGE in path.parents:
            seen = True
            if path.name not in ("comm.py", "watchdog.py"):
                inside.append(getattr(frame.f_code, "co_qualname", frame.f_code.co_name))
        elif seen and caller is None and path.name != "contextlib.py" and "runpy" not in path.name:
            caller = f"{path.name}:{frame.f_lineno}"
        frame = frame.f_back
    route = " > ".join(reversed(inside[:depth])) or "a direct call"
    return f"{route}, from {caller}" if caller else route
