"""A network containing `bilevel.torch.QPFunction` trained under torch.distributed
(DistributedDataParallel, gloo backend, 2 processes on the loopback interface) ends with the
same parameters as one process trained on the whole batch: the layer's gradients of shared
inputs (Q, G, h) and of batched ones (p, through a linear map) are per-item sums, so DDP's
average of the ranks' half-batch means is the whole batch's mean."""

import os
import subprocess
import sys

import numpy as np
import pytest

if os.environ.get("BILEVEL_REQUIRE_TORCH"):
    import torch  # CI: a missing torch is a failure, not a skip
else:
    torch = pytest.importorskip("torch", reason="the PyTorch adapter needs `pip install torch`")

from bilevel.torch import QPFunction  # noqa: E402

N, M, FEATURES, BATCH, STEPS = 4, 3, 3, 8, 5
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")


class TinyQpNet(torch.nn.Module):
    """x ↦ z*(x) = argmin ½zᵀQz + p(x)ᵀz s.t. Gz ≤ h, with p(x) = Wx + c and Q = LLᵀ + I, G, h
    learned (shared by the batch)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(FEATURES, N, dtype=torch.float64)
        self.L = torch.nn.Parameter(0.3 * torch.randn(N, N, dtype=torch.float64))
        self.G = torch.nn.Parameter(torch.randn(M, N, dtype=torch.float64))
        self.h = torch.nn.Parameter(0.2 * torch.ones(M, dtype=torch.float64))
        self.qp = QPFunction(threads=1)

    def forward(self, x):
        Q = self.L @ self.L.T + torch.eye(N, dtype=torch.float64)
        e = torch.empty(0, dtype=torch.float64)
        return self.qp(Q, self.lin(x), self.G, self.h, e, e)


def data():
    """A fixed batch: inputs and targets, some of which the initial constraints cut off."""
    rng = np.random.default_rng(11)
    x = torch.tensor(rng.standard_normal((BATCH, FEATURES)))
    y = torch.tensor(rng.standard_normal((BATCH, N)))
    return x, y


def run(world, tmp_path):
    """Launches `world` worker processes (1: no torch.distributed) and returns rank 0's
    parameters."""
    out = tmp_path / f"params-{world}.pt"
    store = tmp_path / f"store-{world}"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(store), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for r in range(world)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} of {world} failed:\n{log}"
    return torch.load(out)


def test_two_processes_under_ddp_train_the_same_parameters_as_one(tmp_path):
    torch.manual_seed(0)
    initial = TinyQpNet().state_dict()
    one = run(1, tmp_path)
    two = run(2, tmp_path)
    assert one.keys() == two.keys() == initial.keys()
    for name in one:
        moved = (one[name] - initial[name]).abs().max().item()
        assert moved > 1e-3, f"{name} did not train (moved {moved})"
        diff = (one[name] - two[name]).abs().max().item()
        assert diff <= 1e-12, f"{name}: 1 process vs 2 under DDP differ by {diff}"


def test_the_batch_has_active_constraints_for_the_layer_to_learn():
    """The comparison above would be vacuous for the constraint data if no row were active."""
    torch.manual_seed(0)
    net = TinyQpNet()
    x, _ = data()
    z = net(x).detach()
    slack = net.h.detach() - z @ net.G.detach().T
    assert (slack.abs() < 1e-9).any() and (slack > 1e-3).any()
