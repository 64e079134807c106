"""Train a small MLP with FSDP2 and ``lm.torch.LARS`` on the CPU (gloo).

Run with::

    torchrun --nproc_per_node=2 examples/fsdp2_lars.py

Each parameter is a DTensor sharded over the ranks (``fully_shard``); the LARS
trust ratio of a layer uses the norms of the whole layer (the DTensor norms
reduce over the ranks), so the run matches one process on the whole batch.
Each rank trains on its half of every batch; FSDP2 averages the gradients.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import lars_multi as lm


def main(steps: int = 30, batch: int = 64) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    )
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    # biases and other 1-D parameters: no trust ratio, no weight decay
    opt = lm.torch.LARS(
        lm.torch.param_groups(model), lr=1.0, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.02
    )
    data = torch.Generator().manual_seed(1)  # the same batches on every rank
    target_w = torch.randn(8, 1, generator=data)
    for step in range(steps):
        x = torch.randn(batch, 8, generator=data)
        y = torch.tanh(x @ target_w)
        share = batch // world
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss = loss.detach()
        dist.all_reduce(loss)  # the loss of the whole batch
        if rank == 0:
            print(f"step {step:2d}  loss {loss.item() / world:.5f}", flush=True)
    dist.barrier()  # (every rank done before the group goes: gloo aborted a rank now and then)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
