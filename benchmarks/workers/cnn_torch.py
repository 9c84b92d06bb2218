"""The benchmark CNN in PyTorch DistributedDataParallel (gloo, CPU, oneDNN convolutions).

    torchrun --standalone --nproc_per_node W benchmarks/workers/cnn_torch.py --batch 128
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from torch_ddp_worker import agree, setup, training_step  # noqa: E402


def build(seed=0, dropout=0.0):
    """conv3x3-32, relu, pool 2, conv3x3-64, relu, pool 2, fc128, relu, [dropout,] fc10: build_model("cnn")."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, 10))


def main():
    args = common.worker_arguments(__doc__).parse_args()
    rank, world = setup(int(os.environ.get("OMP_NUM_THREADS", "1")))
    images, labels = common.load_split("train")
    step = training_step(DistributedDataParallel(build()), images.reshape(-1, 1, 28, 28), labels, args.batch, rank,
                         world)
    steps, seconds = common.StepTimer(args.warmup, args.seconds).run(step, agree, dist.barrier)
    if rank == 0:
        common.emit({"system": "torch_ddp", "world": world, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds, "torch": torch.__version__})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
