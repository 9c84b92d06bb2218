"""How the machine moves memory between ranks right now: median time of MPI Allreduce on the gradient's size.

    mpiexec -n W python benchmarks/workers/state_probe.py

The 2-core development VM alternates between a normal state (~0.12 ms for the 814 KB gradient on two
ranks) and slow spells (~0.4-0.5 ms) that last 10-60 s; compare_torch_ddp.py runs this before each
multi-rank run so its rounds can be told apart by an indicator independent of the systems timed.
"""

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402


def main():
    comm = MPI.COMM_WORLD
    buffer = np.zeros(common.GRADIENT, np.float32)
    for _ in range(20):
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    times = []
    for _ in range(60):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - start)
    if comm.Get_rank() == 0:
        common.emit({"allreduce_ms": 1e3 * statistics.median(times)})


if __name__ == "__main__":
    main()
