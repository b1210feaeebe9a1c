"""Objectives that train no network (``linear_probe``, ``label_propagation``): the kNN graph and the
propagated labels against dense computations from the definitions, the certainty by hand, the fitted head
against scikit-learn's probabilities, runs with the strategies they can meet, and the pairs refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from ssal.cli import main
from ssal.experiment import loop
from ssal.recipe import load_recipe
from ssal.run.readers import read_metrics
from ssal.semi.label_propagation import certainty, knn_graph, propagate
from ssal.semi.linear_probe import NO_CLASS, LinearProbe


def dense_graph(x: np.ndarray, k: int, gamma: float) -> np.ndarray:
    """W_n from the definitions: centre, unit-normalise, k nearest by cosine (not itself), s ** gamma."""
    v = x - x.mean(axis=0)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    a = np.zeros_like(s)
    for i in range(len(x)):
        order = [j for j in np.argsort(-s[i], kind="stable") if j != i][:k]
        a[i, order] = np.maximum(s[i, order], 0) ** gamma
    w = a + a.T
    d = w.sum(axis=1)
    return w / np.sqrt(np.outer(d, d))


@pytest.mark.parametrize("seed", range(3))
def test_the_graph_and_the_propagated_labels_are_the_dense_closed_form(seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 6, generator=g)
    y = torch.arange(40) % 3
    x = (centres[y] + 0.8 * torch.randn(40, 6, generator=g)).double()
    w = dense_graph(x.numpy(), 5, 3.0)
    got = knn_graph(x, 5, 3.0, chunk=7).toarray()
    assert np.allclose(got, w, atol=1e-6)
    labeled = np.array([0, 1, 2, 5, 7, 8, 11])  # classes 0, 1, 2, 2, 1, 2, 2: unequal counts
    want = np.linalg.solve(np.eye(40) - 0.9 * w, _onehot(40, labeled, y.numpy()[labeled], 3))
    z = propagate(knn_graph(x, 5, 3.0), labeled, y.numpy()[labeled], 3, alpha=0.9, tol=1e-12, max_iter=1000)
    assert np.allclose(z, want, atol=1e-8)


def _onehot(n: int, rows: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    """Y: 1 / n_c on each of class c's n_c labeled rows."""
    y = np.zeros((n, c))
    y[rows, labels] = 1.0
    return y / np.maximum(y.sum(axis=0, keepdims=True), 1)


def test_certainty_by_hand():
    z = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert np.allclose(certainty(z), [1.0, 0.0, 1 - h / math.log(3), 0.0])


class _Model(torch.nn.Module):
    def __init__(self, d: int, c: int):
        super().__init__()
        self.head = torch.nn.Linear(d, c)


@pytest.mark.parametrize("present", [[0, 1, 2, 3], [1, 3], [2]])
def test_the_fitted_head_gives_scikit_learns_probabilities(present):
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 5)) * 0.01 + 0.3  # a small, offset scale, as a fresh network's features
    labels = np.array(present)[g.integers(0, len(present), 60)]
    x += np.eye(5)[labels] * 0.01
    weights = g.uniform(0.2, 1.0, 60)
    objective = LinearProbe.__new__(LinearProbe)
    torch.nn.Module.__init__(objective)
    objective.model = _Model(5, 4)
    objective.fit_head(torch.from_numpy(x), labels, weights, 1.0)
    probs = torch.softmax(objective.model.head(torch.from_numpy(x).float()).double(), dim=1).detach().numpy()
    absent = [c for c in range(4) if c not in present]
    assert (probs[:, absent] < 1e-10).all()
    if len(present) == 1:
        assert np.allclose(probs[:, present[0]], 1.0)
        return
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
    ref = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, labels, sample_weight=weights)
    assert np.allclose(probs[:, present], ref.predict_proba((x - mean) / scale), atol=1e-4)
    assert objective.model.head.bias[absent].eq(NO_CLASS).all()


@pytest.mark.parametrize(("method", "strategy"), [("linear_probe", "margin"), ("linear_probe", "coreset"),
                                                  ("label_propagation", "entropy"), ("label_propagation", "cal"),
                                                  ("label_propagation", "probcover")])
def test_a_run_fits_the_head_only(tiny_recipe, tmp_path, method, strategy):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "run", train={"method": method},
                                               active={"strategy": strategy, "rounds": 1})))
    run = loop.run(load_recipe(path), progress=False)
    rows = read_metrics(run)
    assert [r["n_labeled"] for r in rows] == [20, 30] and all(r["test_acc"] > 0.2 for r in rows)  # chance: 0.1
    if method == "label_propagation":
        assert all(0 <= r["train_pseudo_acc"] <= 1 and 0 <= r["train_pseudo_certainty"] <= 1 for r in rows)


@pytest.mark.parametrize("method", ["linear_probe", "label_propagation"])
def test_the_engine_solves_the_head_and_leaves_the_backbone_as_it_was(method):
    from ssal.data import load_dataset
    from ssal.engine import Engine, Optim, TrainData
    from ssal.models import build_model
    from ssal.recipe.schema import DataConfig, ModelConfig, TrainConfig
    from ssal.semi import OBJECTIVES
    from ssal.semi.base import make_objective

    data = load_dataset(DataConfig(dataset="digits", pool_size=300, test_size=100))
    train = TrainConfig(method=method)
    model = build_model(ModelConfig(backbone="cnn_small"), data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labeled = torch.arange(30)
    fit = Engine(progress=False).fit(model, lambda m: make_objective(OBJECTIVES.get(method), m, train),
                                     TrainData(data.train, labeled, data.train.targets[labeled], torch.arange(30, 300),
                                               hflip=False, unlabeled_labels=data.train.targets[30:300]),
                                     Optim.from_train(train), seed=0)
    after = fit.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert fit.eval_model is fit.model and fit.ema is None
    probs = Engine(progress=False).predict(fit.model, data.train, labeled)["probs"]
    assert (probs.argmax(1) == data.train.targets[labeled]).float().mean() > 0.9  # it fits its labels
    if method == "label_propagation":
        assert 0 <= fit.logs["pseudo_acc"] <= 1


@pytest.mark.parametrize(("override", "fragment"), [
    (["train.ema=0.9"], "set train.ema: 0"),
    (["active.strategy=ll"], "needs a module along the training steps"),
    (["active.strategy=ens"], "needs several models"),
    (["active.strategy=tod"], "needs the weights' EMA"),
    (["train.label_propagation.neighbors=0"], "train.label_propagation.neighbors must be >= 1"),
])
def test_pairs_that_cannot_work_are_refused_in_one_line(tiny_recipe, tmp_path, capsys, override, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "run", train={"method": "label_propagation"})))
    assert main(["run", str(path), *override, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: ") and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_the_propagation_strategy_scores_one_minus_the_dense_certainty():
    from ssal.select import STRATEGIES, Signals
    from ssal.select.signals import Embeddings, Labels, Probs

    g = torch.Generator().manual_seed(4)
    centres = torch.randn(3, 6, generator=g)
    y = torch.arange(45) % 3
    x = centres[y] + 0.9 * torch.randn(45, 6, generator=g)
    lab, cand = x[:6], x[6:]
    signals = Signals(candidates=torch.arange(100, 139), labeled=torch.arange(6), values={
        Embeddings(): cand, Embeddings(labeled=True): lab, Labels(): y[:6], Probs(): torch.full((39, 3), 1 / 3)})
    strategy = STRATEGIES.get("propagation")(STRATEGIES.get("propagation").Config(neighbors=5, alpha=0.9))
    w = dense_graph(torch.cat([lab, cand]).double().numpy(), 5, 3.0)
    z = np.linalg.solve(np.eye(45) - 0.9 * w, _onehot(45, np.arange(6), y[:6].numpy(), 3))
    assert np.allclose(strategy.scores(signals).numpy(), 1 - certainty(z)[6:], atol=1e-4)
    picked = strategy.select(signals, 10, torch.Generator())
    assert len(set(picked.tolist())) == 10 and set(picked.tolist()) <= set(range(100, 139))
