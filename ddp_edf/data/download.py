"""Fetch a file from a list of mirror URLs, SHA-256 verified, written atomically (data/atomic.py)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

from .atomic import write_atomically
from .errors import DataError

CHUNK = 1 << 16
# A whole file must arrive within this (the per-read timeout alone lets a server that trickles a
# byte now and then hold every rank, waiting at the barrier, for ever).  MNIST's largest file is 10 MB.
DEADLINE_S = 1800.0


def download(urls, destination, sha256: str, timeout: float = 60.0, progress=None, deadline_s: float = DEADLINE_S):
    """Try each URL in turn; keep the first download whose SHA-256 matches.

    ``timeout`` bounds each network read, ``deadline_s`` the whole transfer of one file from one URL.
    The file appears at ``destination`` only once verified; nothing is left behind on failure.
    Raises DataError listing what happened at every mirror.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    failures = []
    for url in urls:
        try:
            write_atomically(destination, lambda handle: _fetch(url, handle, sha256, timeout, progress,
                                                                time.monotonic() + deadline_s))
            return destination
        except (urllib.error.URLError, OSError, ValueError) as error:
            failures.append(f"{url}: {getattr(error, 'reason', error)}")
    raise DataError(f"could not download {os.path.basename(destination)}: " + "; ".join(failures)
                    + ". Check the network, set DDP_EDF_MIRROR to a reachable mirror, or copy the file"
                    f" to {os.path.dirname(destination)}")


def _fetch(url, handle, sha256, timeout, progress, deadline):
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        from tqdm import tqdm
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress,
                  leave=False) as bar:
            # read1: whatever one network read brings (read() would wait for a whole CHUNK, so a
            # trickle would never get to the deadline check)
            for block in iter(lambda: response.read1(CHUNK), b""):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"still downloading after {bar.n / 1e6:.1f} MB when the deadline passed "
                                       f"(a stalled or very slow server)")
                handle.write(block)
                digest.update(block)
                bar.update(len(block))
    if digest.hexdigest() != sha256:
        raise ValueError(f"checksum mismatch (sha256 {digest.hexdigest()}, expected {sha256})")
