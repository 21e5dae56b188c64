"""Data parallelism for the training loops: a process's share of each global batch, batch norm over the global batch.

``torch.distributed`` is initialised by the caller (Ray Train does it for its workers: gloo on CPU, NCCL on GPU).
Every process draws the same global batch and takes its rows (:meth:`DataParallel.rows`); DDP averages the
gradients; a masked loss is divided by the global batch's weight sum (:meth:`DataParallel.denominator`) and
:class:`GlobalBatchNorm2d` normalises with the global batch's statistics, on any device (torch's ``SyncBatchNorm``
runs on GPUs only). So a step on N processes is the step one process takes on the global batch, up to the order of
floating-point sums (and dropout, whose masks each process draws for its own rows).

Example:
    >>> parallel = DataParallel(rank=1, world_size=2, wrap=torch.nn.parallel.DistributedDataParallel)
    >>> parallel.rows(32)
    slice(16, 32, None)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import Tensor, nn


def at_least_one(weight_sum: Tensor) -> Tensor:
    """A loss's denominator alone: its weight sum, at least 1 (a batch without a weighted item adds 0)."""
    return weight_sum.clamp_min(1)


@dataclass
class DataParallel:
    """This process is ``rank`` of ``world_size`` data-parallel ones (one process by default).

    Each process takes its contiguous rows of every global batch (``batch_size // world_size``, or one more);
    ``wrap`` makes the model all-reduce its gradients (DDP: ``ray.train.torch.prepare_model``,
    ``torch.nn.parallel.DistributedDataParallel``).
    """

    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] = lambda model: model

    def rows(self, n: int) -> slice:
        """This process's rows of a global batch of ``n``."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def denominator(self, weight_sum: Tensor) -> Tensor:
        """What this process divides a masked loss sum over its rows by, given its rows' ``weight_sum``: the global
        batch's weight sum (at least 1) over the number of processes, so that the processes' losses average to the
        global batch's."""
        if self.world_size == 1:
            return at_least_one(weight_sum)
        total = weight_sum.detach().clone()
        dist.all_reduce(total)
        return at_least_one(total) / self.world_size

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the processes (as they are with one)."""
        if self.world_size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """:class:`~torch.nn.BatchNorm2d` that trains on the statistics of the global batch, summed over the processes
    (a differentiable all-reduce, so the gradients flow through every process's share); in eval mode, or alone,
    it is the plain batch norm. ``(B, C, H, W)`` in, the same out (fp32 under autocast, as batch norm's)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least, as batch norm under autocast
        count = torch.full((1,), xf.numel() // channels, dtype=xf.dtype, device=xf.device)
        sums = dist_autograd.all_reduce(torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:channels] / n
        var = (sums[channels : 2 * channels] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n.detach() / (n.detach() - 1).clamp_min(1))
        shape = (1, channels, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """As batch norm does: an exponential average (``momentum``), or the cumulative one (``momentum=None``)."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def global_batch_norms(model: nn.Module) -> nn.Module:
    """Turn every :class:`~torch.nn.BatchNorm2d` of ``model`` into a :class:`GlobalBatchNorm2d` in place (each
    module's class is swapped, nothing is copied: an optimiser holding its parameters goes on working); returns
    ``model``."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model
