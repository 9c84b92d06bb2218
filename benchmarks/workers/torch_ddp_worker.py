"""The same model, data, batch and learning rate in PyTorch DistributedDataParallel (gloo, CPU).

    torchrun --standalone --nproc_per_node W benchmarks/workers/torch_ddp_worker.py --batch 256

Written as the PyTorch documentation teaches: nn.Sequential, CrossEntropyLoss, optim.SGD with momentum,
DDP(model) averaging gradients over ranks (each rank holds B / W examples of every global batch).
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


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(common.N_IN, common.N_HIDDEN), nn.ReLU(), nn.Linear(common.N_HIDDEN, common.N_CLASSES))


def setup(threads):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def training_step(model, images, labels, batch: int, rank: int, world: int):
    """step(): momentum SGD on this rank's shard of the next global batch, DDP averaging the gradients."""
    optimizer = torch.optim.SGD(model.parameters(), lr=common.LR, momentum=common.MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    shards = common.shard_indices(len(labels), batch, rank, world)

    def step():
        idx = next(shards)
        x, y = torch.from_numpy(images[idx]).float().div_(255.0), torch.from_numpy(labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()   # DDP averages the gradients over the ranks during backward
        optimizer.step()
    return step


def agree(n: int) -> int:
    """Rank 0's n on every rank."""
    value = torch.tensor([n])
    dist.broadcast(value, 0)
    return int(value.item())


def main():
    args = common.worker_arguments(__doc__).parse_args()
    rank, world = setup(int(os.environ.get("OMP_NUM_THREADS", "1")))
    images, labels = common.load_split("train")
    initial = common.load_initial(args.check_init) if args.check_init else None
    model = build()
    if initial:   # nn.Linear holds weight as (outputs, inputs); DDP then broadcasts rank 0's
        with torch.no_grad():
            for layer, w, b in ((model[0], "W1", "b1"), (model[2], "W2", "b2")):
                layer.weight.copy_(torch.from_numpy(initial[w].T.copy()))
                layer.bias.copy_(torch.from_numpy(initial[b]))
    model = DistributedDataParallel(model)
    step = training_step(model, images, labels, args.batch, rank, world)
    if initial:   # the same training as every other system? (compare_torch_ddp.py checks)
        for _ in range(args.check_steps):
            step()
        if rank == 0:
            layers = model.module
            params = {"W1": layers[0].weight.detach().numpy().T, "b1": layers[0].bias.detach().numpy(),
                      "W2": layers[2].weight.detach().numpy().T, "b2": layers[2].bias.detach().numpy()}
            common.emit({"system": "torch_ddp", "world": world,
                         "check": common.check_record(params, initial, images, labels)})
        dist.destroy_process_group()
        return

    steps, seconds = common.StepTimer(args.warmup, args.seconds).run(step, agree, dist.barrier)
    if rank == 0:
        common.emit({"system": "torch_ddp", "world": world, "batch": args.batch, "steps": steps,
                     "samples_per_s": steps * args.batch / seconds, "torch": torch.__version__})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
