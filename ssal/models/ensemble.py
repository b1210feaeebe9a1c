"""Several trained models that predict as one (a deep ensemble's members): what a round evaluates,
selects with and deploys when ``Strategy.members`` > 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Ensemble(nn.Module):
    """Members that predict as one model: the logits are the log of the members' mean probability (so
    a softmax gives it back), the features the members' features side by side."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """[N, K, C]: each member's softmax."""
        return torch.stack([F.softmax(m(x).float(), dim=1) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        outs = [m(x, return_features=True) for m in self.members]
        probs = torch.stack([F.softmax(o[0].float(), dim=1) for o in outs]).mean(dim=0)
        logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        return (logits, torch.cat([o[1] for o in outs], dim=1)) if return_features else logits
