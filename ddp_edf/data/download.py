"""Fetch a file from a list of mirror URLs: to a temporary file, SHA-256 verified, renamed into place."""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

from .errors import DataError

CHUNK = 1 << 16
# A whole file must arrive within this (the per-read timeout alone lets a server that trickles a
# byte now and then hold every rank, waiting at the barrier, for ever).  MNIST's largest file is 10 MB.
DEADLINE_S = 1800.0


def download(urls, destination, sha256: str, timeout: float = 60.0, progress=None, deadline_s: float = DEADLINE_S):
    """Try each URL in turn; keep the first download whose SHA-256 matches.

    ``timeout`` bounds each network read, ``deadline_s`` the whole transfer of one file from one URL.

    The file appears at ``destination`` only once verified (atomic rename); nothing is left
    behind on failure.  Raises DataError listing what happened at every mirror.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    failures = []
    for url in urls:
        temporary = f"{destination}.part-{os.getpid()}"
        try:
            digest = _fetch(url, temporary, timeout, progress, time.monotonic() + deadline_s)
            if digest != sha256:
                failures.append(f"{url}: checksum mismatch (sha256 {digest}, expected {sha256})")
                continue
            os.replace(temporary, destination)
            return destination
        except (urllib.error.URLError, OSError, ValueError) as error:
            failures.append(f"{url}: {getattr(error, 'reason', error)}")
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    raise DataError(f"could not download {os.path.basename(destination)}: " + "; ".join(failures)
                    + ". Check the network, set DDP_EDF_MIRROR to a reachable mirror, or copy the file"
                    f" to {os.path.dirname(destination)}")


def _fetch(url, path, timeout, progress, deadline) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as handle:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        # read1: whatever one network read brings (read() would wait for a whole CHUNK, so a
        # trickle would never get to the deadline check)
        for block in iter(lambda: response.read1(CHUNK), b""):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still downloading after {done / 1e6:.1f} MB when the deadline passed "
                                   f"(a stalled or very slow server)")
            handle.write(block)
            digest.update(block)
            done += len(block)
            if progress:
                _show_progress(url, done, total)
        handle.flush()
        os.fsync(handle.fileno())
    if progress:
        sys.stderr.write("\n")
    return digest.hexdigest()


def _show_progress(url, done, total):
    name = url.rsplit("/", 1)[-1]
    if total:
        filled = int(30 * done / total)
        sys.stderr.write(f"\r{name} [{'#' * filled}{'.' * (30 - filled)}] {done / 1e6:.1f}/{total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{name} {done / 1e6:.1f} MB")
    sys.stderr.flush()
