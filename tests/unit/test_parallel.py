"""Data parallelism: two real processes (torch.distributed, gloo on CPU, DDP; no Ray) take the step one process
takes on the whole batch: global batch norm statistics, the global batch's loss denominators, averaged gradients."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model.parallel import DataParallel, at_least_one, global_batch_norms

BATCH = 10


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A batch ``(BATCH, 3, 6, 5)`` and a mask ``(BATCH,)`` of the rows the loss counts (unevenly spread)."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 6, 5, generator=gen) * 3 + 1, torch.tensor([1, 1, 0, 1, 0, 0, 0, 1, 0, 0]).bool()


def _step(net: nn.Module, x: torch.Tensor, mask: torch.Tensor, parallel: DataParallel) -> dict[str, torch.Tensor]:
    """One training step's loss (a masked mean), gradients and batch-norm running statistics."""
    rows = parallel.rows(len(x))
    model = parallel.wrap(net)
    values = model(x[rows]).square().mean(dim=(1, 2, 3))
    loss = (values * mask[rows]).sum() / parallel.denominator(mask[rows].sum())
    loss.backward()
    norm = net[1]
    return {"loss": loss.detach(), **{f"grad.{k}": p.grad for k, p in net.named_parameters()},
            "running_mean": norm.running_mean, "running_var": norm.running_var}


def _process(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        net = global_batch_norms(_net())
        parallel = DataParallel(rank, world_size, nn.parallel.DistributedDataParallel)
        torch.save(_step(net, *_inputs(), parallel), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_take_the_whole_batch_step(tmp_path: Path) -> None:
    alone = _step(_net(), *_inputs(), DataParallel())
    mp.spawn(_process, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # the processes' losses average to the whole batch's; DDP gives both the averaged (= the whole batch's) gradients
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, alone["loss"])
    for key, value in alone.items():
        if key != "loss":
            for rank in ranks:
                torch.testing.assert_close(rank[key], value, msg=key)
    # with each process normalising its own rows (plain batch norm), the gradients would differ
    assert not torch.allclose(_grads_with_batch_norm_per_share(), alone["grad.0.weight"], rtol=1e-2)


def _grads_with_batch_norm_per_share() -> torch.Tensor:
    """The first convolution's weight gradient averaged over two shares each normalised alone (what DDP with plain
    batch norm computes)."""
    x, mask = _inputs()
    grads = []
    for rank in range(2):
        net = _net()
        rows = DataParallel(rank, 2).rows(BATCH)
        total = at_least_one(mask.sum()) / 2
        ((net(x[rows]).square().mean(dim=(1, 2, 3)) * mask[rows]).sum() / total).backward()
        grads.append(net[0].weight.grad)
    return (grads[0] + grads[1]) / 2


def test_rows_split_a_batch_without_gaps() -> None:
    for world_size in (1, 2, 3, 4):
        shares = [DataParallel(rank, world_size).rows(10) for rank in range(world_size)]
        assert shares[0].start == 0 and shares[-1].stop == 10
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:], strict=False))
        assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1
