"""Time to accuracy, PyTorch DDP (gloo, CPU): the same model, data split, batch, optimizer and schedule.

    torchrun --standalone --nproc_per_node W benchmarks/workers/tta_torch.py --epochs 15 --batch 256 --lr 0.1
                                                                          [--model cnn] [--stop-at ACCURACY]

Trains on the first 50,000 Fashion-MNIST training images (the last 10,000 are ddp_edf's dev split),
momentum SGD with a per-step cosine schedule to 0, shuffled every epoch, each rank a contiguous shard
of every global batch.  After each epoch the clock pauses while rank 0 measures test accuracy.
--model cnn: the CNN of cnn_torch.py (images 1 x 28 x 28), with --warmup-steps of linear warm-up as
ddp_edf's config has; --stop-at ends the run after the first epoch whose test accuracy reaches it.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from cnn_torch import build as build_cnn  # noqa: E402
from torch_ddp_worker import build, setup  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--dev-size", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.0, help="--model cnn: before the last layer")
    parser.add_argument("--stop-at", type=float, default=2.0)
    args = parser.parse_args()
    rank, world = setup(int(os.environ.get("OMP_NUM_THREADS", "1")))
    images, labels = common.load_split("train")
    images, labels = images[:len(labels) - args.dev_size], labels[:len(labels) - args.dev_size]
    test_x, test_y = common.load_split("test")
    if args.model == "cnn":
        images, test_x = images.reshape(-1, 1, 28, 28), test_x.reshape(-1, 1, 28, 28)
    test_x, test_y = torch.from_numpy(test_x).float().div_(255.0), torch.from_numpy(test_y)
    model = DistributedDataParallel(build_cnn(args.seed, args.dropout) if args.model == "cnn" else build(args.seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(labels) / args.batch)
    total = args.epochs * steps_per_epoch
    w = args.warmup_steps      # ddp_edf's Schedule: (step + 1) / w while step < w, then the cosine after it
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / w if step < w else
                                                 0.5 * (1 + math.cos(math.pi * min((step - w) / max(total - w, 1), 1))))
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    curve, paused = [], 0.0
    dist.barrier()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(len(labels))
        model.train()
        for t in range(steps_per_epoch):
            batch = order[t * args.batch:(t + 1) * args.batch]
            lo, hi = common.shard(len(batch), rank, world)
            idx = batch[lo:hi]
            x = torch.from_numpy(images[idx]).float().div_(255.0)
            optimizer.zero_grad(set_to_none=True)
            # sum over the shard / global batch, times W because DDP averages over ranks: the global mean
            loss = loss_fn(model(x), torch.from_numpy(labels[idx])) * (world / len(batch))
            loss.backward()
            optimizer.step()
            schedule.step()
        pause = time.perf_counter()
        elapsed = pause - start - paused
        if rank == 0:
            model.eval()
            with torch.no_grad():
                accuracy = float((model.module(test_x).argmax(dim=1) == test_y).float().mean())
            curve.append({"epoch": epoch + 1, "seconds": elapsed, "accuracy": accuracy})
        reached = torch.tensor([int(rank == 0 and curve[-1]["accuracy"] >= args.stop_at)])
        dist.broadcast(reached, 0)
        paused += time.perf_counter() - pause
        if reached.item():
            break
    if rank == 0:
        common.emit({"system": "torch_ddp", "world": world, "curve": curve})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
