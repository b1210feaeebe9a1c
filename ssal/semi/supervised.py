from __future__ import annotations

import torch
import torch.nn.functional as F

from ssal.semi.base import OBJECTIVES, Objective


@OBJECTIVES.register("supervised")
class Supervised(Objective):
    """Cross-entropy on the weak view of the labeled samples: the baseline."""

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.run_model(batch, "x_l")
        return F.cross_entropy(logits, batch["y_l"]), {}
