"""What MPI sees across the cluster's nodes: one JSON line from rank 0 with, per rank, its host name
and the size of its shared-memory group (MPI_Comm_split_type(COMM_TYPE_SHARED)), and whether an
Allreduce of 8 MB summed correctly.  Run by tests/test_multihost.py under srun or mpiexec."""

import json
import socket

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
values = np.full(1 << 21, rank + 1, np.float32)
comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
facts = comm.gather({"rank": rank, "host": socket.gethostname(),
                     "shared_group": comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size(),
                     "allreduce_ok": bool((values == size * (size + 1) / 2).all())})
if rank == 0:
    print(json.dumps(facts))
