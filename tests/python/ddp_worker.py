"""One process of the data-parallel training in test_distributed.py (not a test module).

Usage: ``python ddp_worker.py RANK WORLD STORE OUT``. Trains `test_distributed.TinyQpNet` for a
few SGD steps on this rank's share of the batch under DistributedDataParallel (gloo backend,
file store, loopback interface) and writes the final parameters to ``OUT`` (``torch.save``).
``WORLD = 1`` trains on the whole batch without torch.distributed: the reference.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_distributed import STEPS, TinyQpNet, data  # noqa: E402


def main():
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.manual_seed(0)  # the same initial parameters in every process
    model = TinyQpNet()
    x, y = data()
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
        net = DistributedDataParallel(model)
        share = x.shape[0] // world
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    else:
        net = model
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        # Mean over this rank's items; DDP averages over ranks: the whole batch's mean.
        loss = ((net(x) - y) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
