"""When more labels stop paying: the agreement of consecutive rounds' predictions on a fixed, seeded
sample of the pool (stabilizing predictions, Bloodgood & Vijay-Shanker 2009), and the rule that may end
a run on it (``active.stop_when``).

A model whose predictions on the pool no longer change from one round to the next gains little from
the next batch. Agreement is measured by Cohen's kappa (agreement corrected for chance), so that a
model that predicts one class everywhere does not look stable by accident of the class balance. The
rule averages the last ``active.stop_window`` kappas: one quiet round is not enough. Kappa is a
few lines of arithmetic (scikit-learn's ``cohen_kappa_score`` gives the same; the tests compare) and
runs on the predictions without leaving torch.
"""

from __future__ import annotations

import torch

STOP_KEYS = ("stable_agree", "stable_kappa", "stable_kappa_mean")


def cohen_kappa(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Cohen's kappa of two label vectors: (p_o - p_e) / (1 - p_e), p_o the share of agreement and p_e the
    agreement expected by chance from each vector's class frequencies. Two identical vectors of a
    single class (p_e = 1) agree perfectly: 1.0 (scikit-learn returns NaN there)."""
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("kappa of two label vectors of the same, non-zero length")
    observed = float((a == b).double().mean())
    pa = torch.bincount(a, minlength=num_classes).double() / len(a)
    pb = torch.bincount(b, minlength=num_classes).double() / len(b)
    expected = float((pa * pb).sum())
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def stability(preds: torch.Tensor, rows: list[dict], num_classes: int, window: int) -> dict:
    """This round's stop-set predictions compared with the last committed round's (``rows``, whose last
    entry recorded its ``stable_preds``): the share that agrees, kappa, and the mean kappa of the last
    ``window`` rounds once there are that many. Round 0 (or a previous round without predictions)
    records only its predictions."""
    out: dict = {"stable_preds": preds.tolist()}
    previous = rows[-1].get("stable_preds") if rows else None
    if not isinstance(previous, list) or len(previous) != len(preds):
        return out
    before = torch.tensor(previous, dtype=torch.long)
    kappa = cohen_kappa(preds, before, num_classes)
    out.update(stable_agree=round(float((preds == before).float().mean()), 6), stable_kappa=round(kappa, 6))
    kappas = [row.get("stable_kappa") for row in rows[max(0, len(rows) - (window - 1)):]] if window > 1 else []
    if len(kappas) == window - 1 and all(isinstance(k, (int, float)) for k in kappas):
        out["stable_kappa_mean"] = round((sum(kappas) + kappa) / window, 6)
    return out


def stops(row: dict, stop_when: float | None) -> bool:
    """Whether the stopping rule ends the run at this round: the mean kappa of the window has reached
    ``stop_when`` (never without a threshold)."""
    mean = row.get("stable_kappa_mean")
    return stop_when is not None and isinstance(mean, (int, float)) and mean >= stop_when


def is_complete(rows: list[dict], active: dict) -> bool:
    """Whether committed ``rows`` end the run: the last round was reached, or the stopping rule ended it."""
    return bool(rows) and (rows[-1]["round"] >= active.get("rounds", 0) or stops(rows[-1], active.get("stop_when")))
