"""The data-parallel protocol: the same start on every rank, decisions taken by rank 0, checked agreement.

It sees only flat NumPy arrays, names of segments and small Python objects, never a graph or an op.
"""

from __future__ import annotations

import hashlib

import numpy as np


class OutOfSyncError(RuntimeError):
    """Ranks that should agree (on parameters, data, options) do not."""


def root_decides(comm, decide):
    """``decide()`` runs on rank 0 only (reading a file, checking a folder); its result, or the
    exception it raised, reaches every rank, so all go on or all raise the same error together."""
    outcome = None
    if comm.is_root:
        try:
            outcome = decide()
        except Exception as error:  # noqa: BLE001  (whatever rank 0 met, every rank must meet)
            outcome = error
    outcome = comm.broadcast_obj(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def first_difference(comm, facts: dict):
    """Collective: (rank, key, its value, rank 0's) for the first of ``facts`` in which some rank
    differs from rank 0, or None when every rank holds the same."""
    everyone = comm.allgather_obj(facts)
    for rank, theirs in enumerate(everyone):
        for key, value in everyone[0].items():
            if theirs.get(key) != value:
                return rank, key, theirs.get(key), value
    return None


def check_agreement(comm, facts: dict):
    """Raise OutOfSyncError on every rank unless every rank holds the same ``facts`` (small values,
    e.g. the number of training examples), naming the first that differs and where."""
    difference = first_difference(comm, facts)
    if difference:
        rank, key, theirs, root = difference
        raise OutOfSyncError(f"rank {rank} has {key} = {theirs!r} where rank 0 has {root!r}: every rank must "
                             f"run the same script on the same data with the same options")


def broadcast_params(comm, params: np.ndarray):
    """Every rank starts from rank 0's parameters (initialised or loaded there)."""
    comm.broadcast(params, root=0)


def check_in_sync(comm, params: np.ndarray, segments, step: int):
    """Raise OutOfSyncError on every rank if any rank's parameters differ (bit for bit) from rank 0's,
    naming the first rank and parameter that differ.  ``segments``: [(name, start, stop), ...]."""
    digests = {name: hashlib.blake2b(params[start:stop].tobytes(), digest_size=8).hexdigest()
               for name, start, stop in segments}
    difference = first_difference(comm, digests)
    if difference:
        raise OutOfSyncError(
            f"parameters diverged at step {step}: rank {difference[0]} differs from rank 0 first in '{difference[1]}'. "
            f"Ranks must run the same code, config and data; nondeterministic ops or a bad node can cause this")
