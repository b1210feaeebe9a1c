"""Benchmark pools: data.imbalance (long tail) and data.redundancy (repeated, optionally noisy copies),
checked by hand on tiny pools, in the pool's fingerprint, refused where they cannot apply."""

from __future__ import annotations

import pytest
import torch
import yaml

from ssal.cli import main
from ssal.data.datasets import load_dataset
from ssal.data.pool_settings import RepeatedSplit, long_tail, long_tail_counts
from ssal.data.splits import TensorSplit
from ssal.errors import DataError
from ssal.experiment import loop
from ssal.recipe import load_recipe
from ssal.recipe.load import from_dict
from ssal.run.readers import read_metrics


def tiny_split(counts: list[int], size: int = 4) -> TensorSplit:
    """Class c has counts[c] images; image i is filled with the value i (so picks can be traced)."""
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    n = len(targets)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    return TensorSplit(images, targets)


def test_long_tail_counts_follow_the_exponential_profile_by_hand():
    # n_max = min(10, 12, 11) = 10; C = 3: 10 * 4^0, 10 * 4^-0.5 = 5, 10 * 4^-1 = 2.5 -> 2
    assert long_tail_counts([10, 12, 11], 4) == [10, 5, 2]
    # CIFAR-10-LT's ratio 100 on 5,000 per class: 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50
    assert long_tail_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts([7, 9], 1) == [7, 7]  # ratio 1: every class at the smallest count


def test_the_long_tail_keeps_each_class_its_count_with_a_seeded_draw():
    split = tiny_split([12, 10, 15, 11])  # n_max 10; ratio 8: 10, 5, 2.5 -> 2, 1.25 -> 1
    got = long_tail(split, 8, seed=0, classes=list("abcd"))
    assert torch.bincount(got.targets, minlength=4).tolist() == [10, 5, 2, 1]
    picked = got.load(torch.arange(len(got)))[:, 0, 0, 0].long()  # the image values are their indices
    assert torch.equal(split.targets[picked], got.targets)  # each kept image keeps its class
    assert picked.unique().numel() == len(picked) and torch.equal(picked, picked.sort().values)
    again = long_tail(split, 8, seed=0, classes=list("abcd"))
    other = long_tail(split, 8, seed=1, classes=list("abcd"))
    assert torch.equal(again.load(torch.arange(len(again))), got.load(torch.arange(len(got))))
    assert not torch.equal(other.load(torch.arange(len(other))), got.load(torch.arange(len(got))))


def test_a_class_missing_from_the_pool_is_named():
    with pytest.raises(DataError, match="none of class 'b': raise data.pool_size"):
        long_tail(tiny_split([10, 0, 10]), 2, seed=0, classes=list("abc"))


def test_copies_follow_the_images_and_carry_their_own_fixed_noise():
    base = TensorSplit(torch.full((3, 1, 16, 16), 128, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    exact = RepeatedSplit(base, 3, 0.0, seed=0)
    assert len(exact) == 9 and exact.targets.tolist() == [0, 1, 2] * 3
    assert torch.equal(exact.load(torch.arange(9)), base.load(torch.tensor([0, 1, 2] * 3)))

    noisy = RepeatedSplit(base, 3, 0.05, seed=0)
    images = noisy.load(torch.arange(9)).float()
    assert torch.equal(images[:3], base.load(torch.arange(3)).float())  # copy 0 is the image itself
    residual = images[3:] - 128
    # the pixel noise has the stated std (0.05 of the range = 12.75 levels), each copy its own draw
    assert abs(residual.std().item() / (0.05 * 255) - 1) < 0.08
    assert abs(residual.mean().item()) < 1.0
    flat = residual.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(6) for j in range(i + 1, 6))
    # the same copy is the same image whichever batch it comes in, and another seed draws other noise
    assert torch.equal(noisy.load(torch.tensor([7]))[0], noisy.load(torch.tensor([2, 7, 4]))[1])
    assert not torch.equal(RepeatedSplit(base, 3, 0.05, seed=1).load(torch.tensor([7])), noisy.load(torch.tensor([7])))


def test_a_dark_copy_is_clamped_to_the_pixel_range():
    base = TensorSplit(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.tensor([0]))
    copy = RepeatedSplit(base, 2, 0.5, seed=0).load(torch.tensor([1]))
    assert copy.dtype == torch.uint8 and copy.min() == 0 and copy.max() > 0


def _ds(**data):
    cfg = from_dict({"data": {"dataset": "digits", "pool_size": 600, **data}})
    return load_dataset(cfg.data, seed=0)


def test_the_settings_enter_the_pool_fingerprint_and_say_what_the_pool_became():
    plain, tail = _ds(), _ds(imbalance=5)
    prints = {str(ds.fingerprint()) for ds in (plain, tail, _ds(imbalance=6), _ds(redundancy=2), _ds(redundancy=3),
                                               _ds(redundancy=2, redundancy_noise=0.1))}
    assert len(prints) == 6
    assert str(_ds(imbalance=5).fingerprint()) == str(tail.fingerprint())  # seeded: the same pool again
    counts = torch.bincount(plain.train.targets, minlength=10).tolist()
    assert torch.bincount(tail.train.targets, minlength=10).tolist() == long_tail_counts(counts, 5)
    assert len(tail.test) == len(plain.test) and torch.equal(tail.test.targets, plain.test.targets)
    assert "data.imbalance=5" in tail.notes[0] and f"{len(tail.train):,} of 600" in tail.notes[0]
    assert not plain.notes
    assert len(_ds(redundancy=3).train) == 1800


def _run(tmp_path, tiny_recipe, name, **data):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path / name, data={"dataset": "digits", "pool_size": 300,
                                                                        "test_size": 100, **data},
                                                 active={"rounds": 1, "initial": 20, "budget": 10, "subset": None})))
    return recipe


def test_a_run_on_a_long_tailed_redundant_pool_refuses_a_resume_with_other_settings(tmp_path, tiny_recipe, capsys):
    recipe = _run(tmp_path, tiny_recipe, "run", imbalance=4, redundancy=2, redundancy_noise=0.05)
    run = loop.run(load_recipe(recipe), progress=False)
    assert [m["n_labeled"] for m in read_metrics(run)] == [20, 30]
    assert "data.imbalance=4" in capsys.readouterr().out
    plain = load_dataset(load_recipe(recipe, ["data.imbalance=null", "data.redundancy=1",
                                              "data.redundancy_noise=0"]).data, seed=0)
    counts = long_tail_counts(torch.bincount(plain.train.targets).tolist(), 4)
    pool = yaml.safe_load((run / "pool.json").read_text())
    assert pool["n"] == 2 * sum(counts)
    for override in ("data.imbalance=5", "data.redundancy=3", "data.redundancy_noise=0.1"):
        assert main(["run", "--resume", str(run), "active.rounds=2", override, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ssal: error:") and override.split("=")[0] in err[0]
    assert main(["run", "--resume", str(run), "active.rounds=2", "--no-progress"]) == 0
    assert [m["n_labeled"] for m in read_metrics(run)] == [20, 30, 40]


@pytest.mark.parametrize("override, fragment", [
    ("data.imbalance=0.5", "data.imbalance must be >= 1"),
    ("data.redundancy=0", "data.redundancy must be >= 1"),
    ("data.redundancy_noise=0.1", "set data.redundancy >= 2"),
    ("data.redundancy_noise=1.5", "data.redundancy_noise must be in [0, 1]"),
    ("data.imbalance=1e9", "leaves class '9' no image"),
    ("active.rounds=60", "more than the 300 images of data.pool_size=300;"),
    ("active.rounds=60 data.redundancy=2", "more than the 600 images of data.pool_size=300 x data.redundancy=2"),
])
def test_bad_pool_settings_are_one_line_and_write_nothing(tmp_path, tiny_recipe, capsys, override, fragment):
    recipe = _run(tmp_path, tiny_recipe, "bad")
    assert main(["run", str(recipe), *override.split(), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssal: error:") and fragment in err[0], err
    assert not (tmp_path / "bad").exists()


def test_the_labels_may_exceed_the_pool_size_by_the_copies(tmp_path, tiny_recipe):
    recipe = _run(tmp_path, tiny_recipe, "copies")
    cfg = load_recipe(recipe, ["data.pool_size=40", "data.redundancy=2", "active.initial=20", "active.budget=30",
                               "active.rounds=2"])
    assert cfg.active.initial + cfg.active.rounds * cfg.active.budget == 80


def test_a_person_labels_the_pool_as_it_is(tmp_path, tiny_recipe, capsys):
    recipe = _run(tmp_path, tiny_recipe, "human")
    assert main(["run", str(recipe), "active.oracle=human", "active.initial_strategy=random", "data.redundancy=2",
                 "--no-progress"]) == 2
    assert "a person labels the pool as it is" in capsys.readouterr().err
