"""Run python -m ddp_edf.train with a fault injected on one rank (for the fault tests under mpiexec).

    python tests/fault_injection.py MODE RANK STEP -- <train arguments>

MODE: raise (an exception at STEP), hang (sleep forever before the Allreduce of STEP),
diverge (perturb one parameter on RANK after STEP), kill (SIGKILL to RANK once STEP steps are done).
"""

import os
import signal
import sys
import time

from ddp_edf import train
from ddp_edf.training.data_parallel import DataParallel


def main():
    mode, rank, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1:]
    original, steps = DataParallel.step, []

    def faulty_step(self, *a, **k):
        if self.comm.rank == rank and len(steps) == step:
            if mode == "raise":
                raise RuntimeError(f"injected failure on rank {rank} at step {step}")
            if mode == "hang":
                while True:
                    time.sleep(1)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        result = original(self, *a, **k)
        steps.append(1)
        if mode == "diverge" and self.comm.rank == rank and len(steps) == step + 1:
            self.graph.parameter("fc1.b").value[0] += 1e-3
        return result

    DataParallel.step = faulty_step
    sys.exit(train.main(args))


if __name__ == "__main__":
    main()
