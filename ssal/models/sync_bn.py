"""BatchNorm over the global batch when several processes train one model.

With N processes each one holds a slice of the global batch; plain BatchNorm would normalise by
the slice's statistics (a different model per process, and a different experiment from one
process). :func:`synchronise_batchnorm` swaps every BatchNorm layer for one whose training
statistics are those of the whole global batch: torch's ``SyncBatchNorm`` on GPUs, and on the
CPU (which ``SyncBatchNorm`` refuses) :class:`GlobalBatchNorm`, written here for that reason.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _SumAcrossProcesses(torch.autograd.Function):
    """all-reduce (sum) with its gradient: the sum's gradient reaches every process's summand."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _SumAcrossProcesses.apply(x)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input rank >= 2) whose training statistics are all-reduced across processes:
    the mean and the biased variance of the global batch normalise, the unbiased one updates the
    running variance, exactly as one process with the whole batch would. Gradients flow through
    the all-reduce. Two-pass (mean, then centred squares) for accuracy in float32. In eval mode,
    or in a single process, it is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float()
        local_n = xf.numel() // xf.shape[1]
        sums = all_reduce(torch.cat([xf.sum(dims), xf.new_tensor([float(local_n)])]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        return y.to(x.dtype)


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer synchronised across processes (in place where it can
    be; returns the module to use). Parameters and buffers are kept. A no-op in a single process."""
    if _world() == 1:
        return module
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (GlobalBatchNorm,
                                                                                        nn.SyncBatchNorm)):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.requires_grad_(any(p.requires_grad for p in module.parameters()) if module.affine else False)
        return new
    for name, child in module.named_children():
        new = _convert(child)
        if new is not child:
            setattr(module, name, new)
    return module


def check_replicas_agree(module: nn.Module, what: str, tolerance: float = 1e-6) -> None:
    """Assert that every process holds the same floating buffers (BatchNorm statistics, EMA
    averages) of ``module``, then make them bit-identical (rank 0's). A difference beyond
    ``tolerance`` means processes trained different models: raise (a bug, not a user error)."""
    if _world() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().double().flatten() for b in buffers])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    spread = float((hi - lo).abs().max()) if len(flat) else 0.0
    scale = 1.0 + float(flat.abs().max())
    if spread > tolerance * scale:
        raise RuntimeError(f"{what}: processes hold different buffers after training (max difference {spread:.3g}); "
                           "the model was not trained as one")
    for b in buffers:
        dist.broadcast(b.data, src=0)
