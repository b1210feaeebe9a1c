"""Report statistics (mean/std, AUBC, paired t intervals, verdicts), tables and plot data, against
hand computation on a made-up results table."""

from __future__ import annotations

import math

import pytest

from ssal.cli import main
from ssal.experiment.report import (
    aubc,
    group_rows,
    mean_std,
    paired_methods,
    paired_to_baseline,
    plot_aubc,
    plot_curves,
    read_results_csv,
    summary_markdown,
    t_interval,
    verdict,
    write_report,
)

# Student-t 97.5 % quantiles from printed tables (df = 1, 2): the intervals are checked against these
T975 = {1: 12.706, 2: 4.303}


def test_aubc_by_hand():
    # trapezoids: (0.5 + 0.7) / 2 * 100 + (0.7 + 0.8) / 2 * 200 = 60 + 150, over 300 labels
    assert aubc([100, 200, 400], [0.5, 0.7, 0.8]) == pytest.approx(0.7)
    assert aubc([400, 100, 200], [0.8, 0.5, 0.7]) == pytest.approx(0.7)  # order does not matter
    assert aubc([100], [0.42]) == pytest.approx(0.42)
    assert aubc([100, 200], [0.6, 0.6]) == pytest.approx(0.6)


def test_mean_std_and_t_interval_by_hand():
    m, s = mean_std([0.01, 0.03, 0.05])
    assert m == pytest.approx(0.03) and s == pytest.approx(0.02)  # sample std: sqrt((4 + 0 + 4) e-4 / 2)
    mean, lo, hi = t_interval([0.01, 0.03, 0.05])
    half = T975[2] * 0.02 / math.sqrt(3)
    assert mean == pytest.approx(0.03)
    assert lo == pytest.approx(0.03 - half, abs=1e-5) and hi == pytest.approx(0.03 + half, abs=1e-5)
    mean, lo, hi = t_interval([0.2, 0.4])
    assert (lo, hi) == pytest.approx((0.3 - T975[1] * math.sqrt(0.02) / math.sqrt(2),
                                      0.3 + T975[1] * math.sqrt(0.02) / math.sqrt(2)), abs=1e-4)
    assert math.isnan(mean_std([0.5])[1]) and math.isnan(t_interval([0.5])[1])


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0.001, 0.02, "better"), (-0.02, -0.001, "worse"), (-0.01, 0.01, "no detectable difference"),
    (0.0, 0.01, "no detectable difference"), (-0.01, 0.0, "no detectable difference"),
])
def test_verdict(low, high, expected):
    assert verdict(low, high, seeds=3) == expected


@pytest.mark.parametrize("seeds", [1, 2])
def test_no_verdict_from_fewer_than_three_seeds_even_with_an_interval_above_zero(seeds):
    assert verdict(0.001, 0.02, seeds) == f"no verdict: {seeds} seed{'s' if seeds == 2 else ''}, needs >= 3"


# A made-up results table: method "sup" with random/entropy, "fm" with random only; 3 seeds x 3 budgets.
ACC = {  # (method, strategy, seed) -> accuracies at 100, 200, 300 labels
    ("sup", "random", 0): [0.60, 0.70, 0.75], ("sup", "random", 1): [0.62, 0.69, 0.74],
    ("sup", "random", 2): [0.58, 0.71, 0.76],
    ("sup", "entropy", 0): [0.60, 0.74, 0.80], ("sup", "entropy", 1): [0.62, 0.72, 0.79],
    ("sup", "entropy", 2): [0.58, 0.75, 0.82],
    ("fm", "random", 0): [0.80, 0.82, 0.83], ("fm", "random", 1): [0.79, 0.83, 0.85],
}
BUDGETS = [100, 200, 300]


def made_up_rows() -> list[dict]:
    return [{"method": m, "strategy": s, "seed": seed, "round": r, "n_labeled": n, "test_acc": a,
             "train_s": 10.0 + r, "select_s": 0.5 if s == "entropy" else 0.1, "run": f"{m}-{s}-{seed}"}
            for (m, s, seed), accs in ACC.items() for r, (n, a) in enumerate(zip(BUDGETS, accs, strict=True))]


def test_groups_and_paired_difference_by_hand():
    groups = group_rows(made_up_rows())
    assert set(groups) == {("sup", "random"), ("sup", "entropy"), ("fm", "random")}
    g = groups[("sup", "entropy")]
    assert g.seeds == [0, 1, 2] and g.budgets == BUDGETS
    x, m, s = g.mean_curve()
    assert m == pytest.approx([0.60, (0.74 + 0.72 + 0.75) / 3, (0.80 + 0.79 + 0.82) / 3])
    assert g.aubc()[0] == pytest.approx(((0.60 + 0.74) / 2 * 100 + (0.74 + 0.80) / 2 * 100) / 200)
    assert g.train_s[0] == pytest.approx(10 + 11 + 12) and g.select_s[1] == pytest.approx(1.5)

    (p,) = paired_to_baseline(groups)  # fm has no other strategy; sup/random is the baseline itself
    assert (p.method, p.strategy, p.seeds) == ("sup", "entropy", [0, 1, 2])
    # per-seed AUBC differences, by hand: only the 200 and 300 points differ
    d = []
    for seed in range(3):
        e, r = ACC[("sup", "entropy", seed)], ACC[("sup", "random", seed)]
        d.append(((e[1] - r[1]) * 100 + (e[2] - r[2]) * 50) / 200)  # (diff_200 * (100/2 + 100/2) + diff_300 * 100/2)
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    assert p.aubc[0] == pytest.approx(mean)
    assert p.aubc[1] == pytest.approx(mean - T975[2] * sd / math.sqrt(3), abs=1e-5)
    assert p.by_budget[100] == pytest.approx((0.0, 0.0, 0.0))  # same seed, same initial labels
    assert p.by_budget[300][0] == pytest.approx((0.05 + 0.05 + 0.06) / 3)
    assert p.verdict == "better"  # differences 0.035..0.045, all positive and tight


def test_summary_markdown_tables():
    text = summary_markdown(made_up_rows(), title="made up")
    assert text.startswith("# made up")
    # the accuracy row of sup/entropy: mean ± sample std (%), and its AUBC
    e = [ACC[("sup", "entropy", s)] for s in range(3)]
    cells = [f"{100 * m:.2f} ± {100 * sd:.2f}" for m, sd in (mean_std([a[i] for a in e]) for i in range(3))]
    assert cells[0] == "60.00 ± 2.00"
    assert f"| sup | entropy | 3 | {' | '.join(cells)} |" in text
    assert "| sup | entropy | 3 | +0.00 [+0.00, +0.00] |" in text
    assert "**better**" in text
    assert "| fm | random | 2 |" in text
    assert "| sup | entropy | 33.0 | 1.5 | 0.045 |" in text  # time: train 10+11+12, select 3 x 0.5


def test_write_report_and_plot_data_match_results_csv(tmp_path):
    paths = write_report(made_up_rows(), tmp_path / "rep", title="t")
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    rows = read_results_csv(paths["results"])
    assert len(rows) == len(made_up_rows())
    # the lines drawn from results.csv == means computed here from the csv rows
    drawn = plot_curves(rows, tmp_path / "c.png")
    assert set(drawn) == {"sup / random", "sup / entropy", "fm / random"}
    for label, (x, y) in drawn.items():
        method, strategy = label.split(" / ")
        mine = [r for r in rows if (r["method"], r["strategy"]) == (method, strategy)]
        assert x == BUDGETS
        for n, v in zip(x, y, strict=True):
            accs = [r["test_acc"] for r in mine if r["n_labeled"] == n]
            assert v == pytest.approx(100 * sum(accs) / len(accs))
    drawn = plot_aubc(rows, tmp_path / "a.png")
    for label, (length, dots) in drawn["bars"].items():
        method, strategy = label.split(" / ")
        seeds = sorted({r["seed"] for r in rows if (r["method"], r["strategy"]) == (method, strategy)})
        per_seed = []
        for seed in seeds:
            pts = sorted((r["n_labeled"], r["test_acc"]) for r in rows
                         if (r["method"], r["strategy"], r["seed"]) == (method, strategy, seed))
            area = sum((a0 + a1) / 2 * (n1 - n0) for (n0, a0), (n1, a1) in zip(pts[:-1], pts[1:], strict=True))
            per_seed.append(100 * area / (pts[-1][0] - pts[0][0]))
        assert dots == pytest.approx(per_seed)
        assert length == pytest.approx(sum(per_seed) / len(per_seed))


def test_duplicate_results_are_refused():
    rows = made_up_rows()
    with pytest.raises(Exception, match="two results for sup / random / seed 0"):
        group_rows(rows + rows[:1])


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssal: error: ") and err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "neither a run" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_the_aubc_axis_starts_at_zero_and_the_difference_axis_holds_zero_and_every_interval(tmp_path):
    rows = made_up_rows()
    drawn = plot_aubc(rows, tmp_path / "a.png")
    assert drawn["xlim"]["aubc"] == (0.0, 100.0)
    (p,) = paired_to_baseline(group_rows(rows))
    mean, lo, hi = (100 * v for v in p.aubc)
    assert drawn["differences"] == {"sup / entropy": pytest.approx((mean, lo, hi))}
    left, right = drawn["xlim"]["difference"]
    assert left < 0 < right and left <= lo and hi <= right and left == -right
    # a far interval widens the axis rather than being cut
    far = [{**r, "test_acc": r["test_acc"] + (0.3 if r["strategy"] == "entropy" and r["seed"] == 0 else 0)}
           for r in rows]
    (p,) = paired_to_baseline(group_rows(far))
    far_drawn = plot_aubc(far, tmp_path / "b.png")
    assert far_drawn["xlim"]["difference"][1] >= 100 * p.aubc[2]


def test_summary_has_no_verdict_from_two_seeds_and_pairs_methods_under_random():
    rows = [r for r in made_up_rows() if r["seed"] < 2]
    text = summary_markdown(rows, title="t", caution="too short to rank methods")
    assert "> **Caution:** too short to rank methods" in text.splitlines()[2]
    assert "**no verdict: 2 seeds, needs >= 3**" in text and "**better**" not in text
    # no 'supervised' method: the first by name, 'fm', is the reference; sup / random minus fm / random by hand
    assert "## Difference between methods under `random` selection" in text and "(`fm`)" in text
    lines = [line for line in text.splitlines() if line.startswith("| sup | 2 |")]
    assert len(lines) == 1
    d = [aubc(BUDGETS, ACC[("sup", "random", s)]) - aubc(BUDGETS, ACC[("fm", "random", s)]) for s in (0, 1)]
    assert f"| {100 * sum(d) / 2:+.2f} [" in lines[0] and "no verdict: 2 seeds" in lines[0]
    renamed = [{**r, "method": "supervised" if r["method"] == "sup" else r["method"]} for r in rows]
    assert "(`supervised`)" in summary_markdown(renamed)


def test_methods_are_compared_only_within_one_setting_and_over_common_budgets():
    # a comparison appends its other axes to the method: fm and sup are compared per pool, never across
    rows = [{**r, "method": f"{r['method']}/pool={pool}", "run": f"{r['run']}-{pool}"}
            for pool in ("a", "b") for r in made_up_rows()]
    pairs = paired_methods(group_rows(rows))
    assert sorted((ref, p.method) for ref, p in pairs) == [("fm/pool=a", "sup/pool=a"), ("fm/pool=b", "sup/pool=b")]
    # budgets 1000-3000 against 100-300: no budget in common, nothing to pair
    shifted = [{**r, "method": "supervised", "n_labeled": 10 * r["n_labeled"]}
               for r in made_up_rows() if r["method"] == "sup" and r["strategy"] == "random"]
    fm = [r for r in made_up_rows() if r["method"] == "fm"]
    assert paired_methods(group_rows(shifted + fm)) == []
    # a partly common range: the AUBCs of both are taken over the budgets both measured (100 and 200)
    cut = [r for r in made_up_rows() if not (r["method"] == "fm" and r["n_labeled"] == 300)]
    ((ref, p),) = paired_methods(group_rows(cut))
    d = [aubc(BUDGETS[:2], ACC[("sup", "random", s)][:2]) - aubc(BUDGETS[:2], ACC[("fm", "random", s)][:2])
         for s in (0, 1)]
    assert ref == "fm" and p.aubc[0] == pytest.approx(sum(d) / 2)


def test_a_pair_of_strategies_is_subtracted_under_each_method_that_ran_both():
    rows = made_up_rows()
    text = summary_markdown(rows, pairs=[("random", "entropy")])
    (line,) = [x for x in text.splitlines() if x.startswith("| sup | random − entropy | 3 |")]
    d = [aubc(BUDGETS, ACC[("sup", "random", s)]) - aubc(BUDGETS, ACC[("sup", "entropy", s)]) for s in range(3)]
    assert f"| {100 * sum(d) / 3:+.2f} [" in line and line.endswith("| **worse** |")
    assert "| fm | random − entropy" not in text  # fm ran no entropy
