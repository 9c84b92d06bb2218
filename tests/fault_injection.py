"""Run python -m ddp_edf.train with a fault injected on one rank (for the fault tests under mpiexec).

    python tests/fault_injection.py MODE RANK STEP -- <train arguments>

MODE: raise (an exception at STEP), hang (sleep forever before the Allreduce of STEP),
diverge (perturb one parameter on RANK after STEP).
"""

import sys
import time

from ddp_edf import train
from ddp_edf.training.trainer import Trainer


def main():
    mode, rank, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1:]
    original = Trainer.train_step

    def faulty_step(self, *a, **k):
        if self.comm.rank == rank and self.step == step:
            if mode == "raise":
                raise RuntimeError(f"injected failure on rank {rank} at step {step}")
            if mode == "hang":
                while True:
                    time.sleep(1)
        result = original(self, *a, **k)
        if mode == "diverge" and self.comm.rank == rank and self.step == step:
            self.graph.parameter("fc1.b").value[0] += 1e-3
        return result

    Trainer.train_step = faulty_step
    sys.exit(train.main(args))


if __name__ == "__main__":
    main()
