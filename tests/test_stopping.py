"""The stop signal: Cohen's kappa between consecutive rounds' predictions on a seeded stop set, its mean
over a window, and active.stop_when ending a run (and --resume going on when the threshold is lifted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from ssal.cli import main
from ssal.experiment import loop
from ssal.label.stopping import cohen_kappa, is_complete, stability, stops
from ssal.recipe import load_recipe
from ssal.run.readers import measured, read_metrics


def test_kappa_by_hand_and_against_scikit_learn():
    a, b = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    # p_o = 3/4; class shares (1/2, 1/2) and (1/4, 3/4): p_e = 1/8 + 3/8 = 1/2; kappa = (3/4 - 1/2) / (1/2)
    assert cohen_kappa(a, b, 2) == pytest.approx(0.5)
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        n, c = int(torch.randint(5, 300, (1,), generator=gen)), int(torch.randint(2, 12, (1,), generator=gen))
        x = torch.randint(0, c, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < float(torch.rand(1, generator=gen))
        y = torch.where(flip, torch.randint(0, c, (n,), generator=gen), x)
        want = cohen_kappa_score(x.numpy(), y.numpy())
        if want == want:  # scikit-learn's NaN case is checked below
            assert cohen_kappa(x, y, c) == pytest.approx(want, abs=1e-12), trial


def test_kappa_of_a_single_class_everywhere():
    same = torch.zeros(10, dtype=torch.long)
    assert cohen_kappa(same, same, 3) == 1.0  # identical: perfect agreement (scikit-learn says NaN)
    with pytest.raises(ValueError):
        cohen_kappa(same, same[:5], 3)


def test_stability_compares_with_the_last_round_and_averages_the_window():
    r0 = stability(torch.tensor([0, 1, 2, 2]), [], 3, window=2)
    assert r0 == {"stable_preds": [0, 1, 2, 2]}  # round 0: nothing to compare with
    rows = [{"round": 0, **r0}]
    r1 = stability(torch.tensor([0, 1, 2, 1]), rows, 3, window=2)
    k1 = cohen_kappa(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 2]), 3)
    assert r1["stable_agree"] == 0.75 and r1["stable_kappa"] == round(k1, 6)
    assert "stable_kappa_mean" not in r1  # one kappa: the window of 2 is not full
    rows.append({"round": 1, **r1})
    r2 = stability(torch.tensor([0, 1, 2, 1]), rows, 3, window=2)
    assert r2["stable_agree"] == 1.0 and r2["stable_kappa"] == 1.0
    assert r2["stable_kappa_mean"] == round((round(k1, 6) + 1.0) / 2, 6)
    assert stability(torch.tensor([0, 1]), rows, 3, window=2) == {"stable_preds": [0, 1]}  # another stop set


def test_the_rule_and_what_ends_a_run():
    assert not stops({"stable_kappa_mean": 0.995}, None)  # no threshold: only reported
    assert stops({"stable_kappa_mean": 0.99}, 0.99) and not stops({"stable_kappa_mean": 0.98}, 0.99)
    assert not stops({"stable_kappa": 1.0}, 0.5)  # no full window yet
    assert is_complete([{"round": 5}], {"rounds": 5}) and not is_complete([], {"rounds": 0})
    assert is_complete([{"round": 2, "stable_kappa_mean": 0.999}], {"rounds": 5, "stop_when": 0.99})
    assert not is_complete([{"round": 2, "stable_kappa_mean": 0.999}], {"rounds": 5, "stop_when": None})


def test_the_log_line_and_the_page_say_how_stable_the_predictions_are():
    row = {"test_acc": 0.8, "stable_agree": 0.987, "stable_kappa": 0.98123, "stable_kappa_mean": 0.97}
    assert measured(row) == ("test acc 80.00 %, predictions 98.7 % as the last round's (kappa 0.981, mean of the "
                             "last rounds 0.970)")


def _rows(run: Path) -> list[dict]:
    return read_metrics(run)


def test_stop_when_ends_the_run_and_lifting_it_on_resume_gives_the_uninterrupted_run(write_recipe, tmp_path, capsys):
    path = write_recipe("stop", active={"rounds": 3, "stop_window": 1, "stop_set": 400})
    stopped = loop.run(load_recipe(path, ["active.stop_when=0.01", f"output_dir={tmp_path / 'stopped'}"]),
                       progress=False)
    out = capsys.readouterr().out
    rows = _rows(stopped)
    assert [r["round"] for r in rows] == [0, 1] and rows[-1]["stable_kappa_mean"] >= 0.01
    assert "stopping after round 1" in out
    assert not (stopped / "rounds" / "r01").exists()  # a stopped round selects nothing
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    assert "is complete (2 rounds); nothing to do" in capsys.readouterr().out
    # without the threshold the run goes on, and is the run that never had one
    assert main(["run", "--resume", str(stopped), "active.stop_when=null", "--no-progress"]) == 0
    full = loop.run(load_recipe(path, [f"output_dir={tmp_path / 'full'}"]), progress=False)
    assert [r["round"] for r in _rows(stopped)] == [0, 1, 2, 3]
    for a, b in zip(_rows(stopped), _rows(full), strict=True):
        assert a["test_acc"] == b["test_acc"] and a["stable_preds"] == b["stable_preds"]
    assert json.loads((stopped / "pool.json").read_text()) == json.loads((full / "pool.json").read_text())


def test_every_round_records_the_stop_set_predictions_of_a_seeded_sample(write_recipe, tmp_path):
    path = write_recipe("signal", active={"rounds": 3, "stop_set": 50})
    rows = _rows(loop.run(load_recipe(path), progress=False))
    assert [len(r["stable_preds"]) for r in rows] == [50, 50, 50, 50]
    assert "stable_kappa" not in rows[0] and all("stable_kappa" in r for r in rows[1:])
    # the default window is 3 kappas: rounds 1, 2 and 3
    assert ["stable_kappa_mean" in r for r in rows] == [False, False, False, True]
    assert rows[3]["stable_kappa_mean"] == pytest.approx(sum(r["stable_kappa"] for r in rows[1:]) / 3, abs=2e-6)
    off = _rows(loop.run(load_recipe(path, ["active.stop_set=0", f"output_dir={tmp_path / 'off'}"]), progress=False))
    assert all("stable_preds" not in r for r in off)
    assert [r["test_acc"] for r in off] == [r["test_acc"] for r in rows]  # the signal changes nothing else


@pytest.mark.parametrize("override, fragment", [
    ("active.stop_when=1.5", "active.stop_when must be in (0, 1]"),
    ("active.stop_when=0", "active.stop_when must be in (0, 1]"),
    ("active.stop_window=0", "active.stop_window must be >= 1"),
    ("active.stop_set=-1", "active.stop_set must be >= 0"),
])
def test_bad_stop_settings_are_one_line(write_recipe, capsys, override, fragment):
    path = write_recipe("bad")
    assert main(["run", str(path), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssal: error: ") and fragment in err and "\n" not in err
    assert not (path.parent / "runs" / "bad").exists()


def test_stop_when_without_a_stop_set_says_how_to_fix_it(write_recipe, capsys):
    path = write_recipe("noset")  # (the tiny recipe has active.stop_set: 0)
    assert main(["run", str(path), "active.stop_when=0.99"]) == 2
    assert "set active.stop_set > 0" in capsys.readouterr().err


def test_ssal_report_of_one_run_shows_each_round_and_what_the_stop_signal_says(write_recipe, tmp_path, capsys):
    run = loop.run(load_recipe(write_recipe("report", active={"rounds": 3, "audit": 30, "stop_set": 400})),
                   progress=False)
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    rows = _rows(run)
    for row in rows:
        acc = (f"test {100 * row['test_acc']:.2f} %; audit {100 * row['audit_acc']:.1f} % "
               f"({100 * row['audit_low']:.1f}-{100 * row['audit_high']:.1f}, 30 images)")
        stable = "-" if row["round"] == 0 else f"{100 * row['stable_agree']:.1f} %, kappa {row['stable_kappa']:.3f}"
        assert f"| {row['round']} | {row['n_labeled']} | {acc} | {stable}" in out
    mean = rows[-1]["stable_kappa_mean"]
    assert f"(mean {mean:.3f})" in out
    assert ("have stopped changing" if mean >= 0.99 else "still change") in out
    assert (tmp_path / "report" / "results.csv").is_file()  # with a test set the comparison files follow
