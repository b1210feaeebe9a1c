"""Curves, seed statistics, AUBC, the comparison with random sampling, and their plots.

The unit of every table is a *result row*: one round of one run, with the labels that say which
comparison cell it belongs to (``method``, ``strategy``, ``seed``). ``ssal compare`` collects them
from its cells, ``ssal report`` from any finished runs; both end in :func:`write_report`, which
writes ``results.csv``, ``summary.md``, ``curves.png`` and ``aubc.png``.

Statistics (all over seeds):
  - mean and sample standard deviation (ddof = 1) of the test accuracy at every budget;
  - AUBC, the area under the accuracy-labels curve divided by the labels it spans (trapezoids),
    i.e. the mean accuracy over the budget range, in [0, 1];
  - the paired difference to ``random`` under the same method: per seed, strategy minus random
    (same seed, so the same initial labels and training noise), mean and a 95 % Student-t
    interval; verdict "better" if the interval lies above 0, "worse" if below, else "no
    detectable difference", and none at all from fewer than 3 seeds (the table says so);
  - the same paired difference between methods, each method's ``random`` group against the
    reference method's (``supervised`` when there is one): what SSL buys at each budget.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssal import files
from ssal.errors import DataError
from ssal.run.outputs import check_folder, data_folders, resolved
from ssal.run.readers import is_comparison, read_metrics, recorded_recipe, run_labels, runs_under, tested_rounds

__all__ = ["read_metrics", "write_report", "collect_rows"]  # read_metrics: re-exported for scripts

RESULT_FIELDS = ("method", "strategy", "seed", "round", "n_labeled", "test_acc", "train_s", "select_s", "run")
BASELINE = "random"


def _pyplot():
    # heavy (pyplot: 0.8 s of import on 2 CPU cores), and only the commands that draw need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (as above)

    return plt


def _png(fig, **kwargs) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return buf.getvalue()


def curve_files(rows: list[dict], title: str) -> tuple[str, bytes]:
    """The text of ``curve.csv`` and the bytes of ``curve.png`` of a run's rows: accuracy against labels,
    on the test split (``test_acc``) and, with an audit set, on it with its 95 % interval (``audit_acc``,
    ``audit_low``, ``audit_high``; empty for a round whose audit answers were all skips)."""
    from matplotlib.figure import Figure  # heavy (matplotlib), and only the runs that draw need it

    test, audit = any("test_acc" in r for r in rows), any("audit_acc" in r for r in rows)
    keys = (("test_acc",) if test else ()) + (("audit_acc", "audit_low", "audit_high") if audit else ())
    text = files.csv_text(("round", "n_labeled", *keys),
                          ([r["round"], r["n_labeled"], *(f"{r[k]:.6f}" if k in r else "" for k in keys)]
                           for r in rows))
    # a bare Figure (no pyplot state to close) with fixed margins: a third of the time of pyplot's figure
    # plus tight_layout, and it is drawn after every round
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.13, right=0.97, top=0.91, bottom=0.14)
    n = [r["n_labeled"] for r in rows]
    if test:
        ax.plot(n, [100 * r["test_acc"] for r in rows], marker="o", label="test")
    if audit:
        got = [r for r in rows if "audit_acc" in r]
        x = [r["n_labeled"] for r in got]
        ax.plot(x, [100 * r["audit_acc"] for r in got], marker="s", label=f"audit ({got[-1]['audit_n']} images)")
        ax.fill_between(x, [100 * r["audit_low"] for r in got], [100 * r["audit_high"] for r in got], alpha=0.2,
                        label="95 % interval")
        ax.legend(fontsize=8)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy (%)" if not audit else "accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return text, _png(fig)


# ----------------------------------------------------------------------------- rows of runs

def run_rows(run_dir: str | Path) -> list[dict]:
    """Result rows of one run directory, labelled by :func:`ssal.run.readers.run_labels`. A damaged file
    is a one-line :class:`DataError`."""
    run_dir = Path(run_dir)
    labels = run_labels(run_dir)
    return [{**labels, "round": int(m["round"]), "n_labeled": int(m["n_labeled"]), "test_acc": float(m["test_acc"]),
             "train_s": _seconds(m, "train_s"), "select_s": _seconds(m, "select_s"),
             "run": str(run_dir)} for m in tested_rounds(run_dir)]


def _seconds(row: dict, key: str) -> float:
    value = row.get(key, 0.0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def collect_rows(paths: Iterable[str | Path]) -> list[dict]:
    """Rows of run directories; a directory of ``ssal compare`` (with ``cells/``) stands for its cells."""
    rows = [row for d in runs_under(paths) for row in run_rows(d)]
    if not rows:
        raise DataError("no finished round in the given directories; run them first")
    return rows


REPORT_FILES = ("results.csv", "summary.md", "curves.png", "aubc.png")


def report_out(runs: list[str], out: str | None, force: bool = False) -> Path:
    """Where ``ssal report RUNS`` writes: ``out``; by default the comparison folder given alone (its own
    report), else ./report. Never into a run, another comparison or a data folder of the runs, nor over
    other files unless ``force`` (see :mod:`ssal.run.outputs`)."""
    single = Path(runs[0])
    comparison = single if len(runs) == 1 and is_comparison(single) else None
    target = Path(out) if out else comparison or Path("report")
    own = comparison is not None and resolved(target) == resolved(comparison)
    folders: list[Path] = []
    for d in runs_under(runs):
        with contextlib.suppress(AttributeError):  # a recipe.yaml whose sections are not mappings names none
            folders += data_folders(recorded_recipe(d) or {})

    def is_ours(folder: Path) -> bool:
        return own or all(p.name in REPORT_FILES for p in folder.iterdir())

    return check_folder(target, is_ours, "--out", force, folders, allow=comparison if own else None)


# ----------------------------------------------------------------------------- one run, round by round

STABLE = 0.99  # the mean kappa the report calls stable (Bloodgood & Vijay-Shanker's threshold)


def one_run(path: Path) -> tuple[str | None, bool]:
    """``ssal report RUN`` on one run directory: its round table (None for anything else: a comparison, a
    folder of runs) and whether it measured test accuracy (then the comparison files follow; they
    compare test accuracy, so a run without it gets a line saying so instead)."""
    if is_comparison(path) or not (path / "run.json").is_file():
        return None, False
    try:
        rows = read_metrics(path)
    except DataError as e:
        raise DataError(f"cannot report on '{path}': {e}") from None
    if not rows:
        raise DataError(f"'{path}' has no finished round yet; run it (or label its first batch) first")
    tested = all("test_acc" in row for row in rows)
    text = round_table(rows)
    if not tested:
        text += ("\n(no results.csv or plots: they compare test accuracy, which this run does not measure; a "
                 "labeled test folder, data.test_root, adds it)")
    return text, tested


def round_table(rows: list[dict]) -> str:
    """One run's rounds for a person (``ssal report RUN``): labels, accuracy (test, or the audit set's with
    its 95 % interval, or only the model's confidence), and how much the predictions still change (the
    stop signal of :mod:`ssal.label.stopping`), then what that says about labeling more."""
    lines = ["| round | labels | accuracy | predictions as the last round's | train s |", "|---|---|---|---|---|"]
    for row in rows:
        acc = []
        if "test_acc" in row:
            acc.append(f"test {100 * row['test_acc']:.2f} %")
        if "audit_acc" in row:
            acc.append(f"audit {100 * row['audit_acc']:.1f} % ({100 * row['audit_low']:.1f}-"
                       f"{100 * row['audit_high']:.1f}, {row['audit_n']} images)")
        if not acc and "pool_mean_conf" in row:
            acc.append(f"none measured (mean confidence {100 * row['pool_mean_conf']:.1f} %)")
        stable = "-"
        if "stable_kappa" in row:
            stable = f"{100 * row['stable_agree']:.1f} %, kappa {row['stable_kappa']:.3f}" + (
                f" (mean {row['stable_kappa_mean']:.3f})" if "stable_kappa_mean" in row else "")
        lines.append(f"| {row['round']} | {row['n_labeled']} | {'; '.join(acc) or '-'} | {stable} | "
                     f"{_seconds(row, 'train_s'):.1f} |")
    return "\n".join(lines) + "\n\n" + stop_advice(rows)


def stop_advice(rows: list[dict]) -> str:
    """What the stop signal of the last rounds says, in one sentence."""
    last = rows[-1] if rows else {}
    if "stable_kappa_mean" in last:
        if last["stable_kappa_mean"] >= STABLE:
            return (f"The predictions have stopped changing (mean kappa {last['stable_kappa_mean']:.3f} >= {STABLE} "
                    "over the last rounds): more labels are unlikely to change this model much.")
        return (f"The predictions still change (mean kappa {last['stable_kappa_mean']:.3f} < {STABLE} over the "
                "last rounds): more labels still move the model.")
    if "stable_kappa" in last:
        return "Too few rounds to judge whether the predictions have settled (the window is not full yet)."
    return "No stop signal recorded (active.stop_set: 0, or a run made before ssal had one)."


# ----------------------------------------------------------------------------- statistics

def aubc(n_labeled: Sequence[float], acc: Sequence[float]) -> float:
    """Normalised area under the accuracy-labels curve (trapezoids / labels spanned); a curve
    of one point is that point."""
    n, a = np.asarray(n_labeled, dtype=float), np.asarray(acc, dtype=float)
    order = np.argsort(n)
    n, a = n[order], a[order]
    if len(n) == 0:
        raise ValueError("aubc of an empty curve")
    if len(n) == 1 or n[-1] == n[0]:
        return float(a.mean())
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(n)) / (n[-1] - n[0]))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t confidence interval of the mean (NaN bounds for n < 2)."""
    from scipy.stats import t  # heavy (1.0 s of import), and only a report's intervals need it

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(right: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``right / n`` (95 % with the default ``z``): unlike the
    normal approximation it stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n.
    scipy.stats.binomtest(right, n).proportion_ci(method="wilson") gives the same (the tests compare); written
    out to spare a run the second of importing scipy.stats."""
    if n <= 0:
        raise ValueError("an interval of no observation")
    p, z2 = right / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


# Fewer seeds give no verdict: with 2 the 95 % interval rests on one degree of freedom (t = 12.7) and
# a single lucky seed decides it; with 3, t = 4.3.
MIN_SEEDS = 3


def verdict(low: float, high: float, seeds: int = MIN_SEEDS) -> str:
    if seeds < MIN_SEEDS:
        return f"no verdict: {seeds} seed{'' if seeds == 1 else 's'}, needs >= {MIN_SEEDS}"
    if math.isnan(low) or math.isnan(high):
        return "no verdict: no interval"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference"


@dataclass
class Group:
    """One method x strategy over its seeds."""

    method: str
    strategy: str
    acc: dict[int, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))  # n_labeled -> seed -> acc
    train_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))  # seed -> total over rounds
    select_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def budgets(self) -> list[int]:
        return sorted(self.acc)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for per in self.acc.values() for s in per})

    def curve(self, seed: int) -> tuple[list[int], list[float]]:
        ns = [n for n in self.budgets if seed in self.acc[n]]
        return ns, [self.acc[n][seed] for n in ns]

    def aubc(self) -> dict[int, float]:
        return {s: aubc(*self.curve(s)) for s in self.seeds}

    def mean_curve(self) -> tuple[list[int], list[float], list[float]]:
        stats = [mean_std(list(self.acc[n].values())) for n in self.budgets]
        return self.budgets, [m for m, _ in stats], [s for _, s in stats]


def group_rows(rows: Iterable[dict]) -> dict[tuple[str, str], Group]:
    groups: dict[tuple[str, str], Group] = {}
    for r in rows:
        g = groups.setdefault((r["method"], r["strategy"]), Group(r["method"], r["strategy"]))
        seed = int(r["seed"])
        if seed in g.acc[int(r["n_labeled"])]:
            raise DataError(f"two results for {r['method']} / {r['strategy']} / seed {seed} at {r['n_labeled']} "
                            f"labels ({r.get('run', '?')}); give each run once")
        g.acc[int(r["n_labeled"])][seed] = float(r["test_acc"])
        g.train_s[seed] += float(r["train_s"])
        g.select_s[seed] += float(r["select_s"])
    return dict(sorted(groups.items()))


@dataclass
class Paired:
    """A group minus a reference group, paired by seed: a strategy minus random under one method, or
    a method minus the reference method under random."""

    method: str
    strategy: str
    seeds: list[int]
    aubc: tuple[float, float, float]  # mean, low, high of the per-seed differences
    by_budget: dict[int, tuple[float, float, float]]

    @property
    def verdict(self) -> str:
        return verdict(self.aubc[1], self.aubc[2], len(self.seeds))


def paired(g: Group, base: Group) -> Paired | None:
    """``g`` minus ``base`` over their common seeds, each seed's AUBCs over the budgets both measured (None
    without a common seed and budget: AUBCs over different label ranges do not compare)."""
    both = {s: [n for n in g.budgets if s in g.acc[n] and s in base.acc.get(n, {})]
            for s in set(g.seeds) & set(base.seeds)}  # seed -> the budgets both measured
    seeds = sorted(s for s, ns in both.items() if ns)
    if not seeds:
        return None
    diffs = [aubc(both[s], [g.acc[n][s] for n in both[s]]) - aubc(both[s], [base.acc[n][s] for n in both[s]])
             for s in seeds]
    by_budget = {}
    for n in g.budgets:
        common = [s for s in seeds if n in both[s]]
        if common:
            by_budget[n] = t_interval([g.acc[n][s] - base.acc[n][s] for s in common])
    return Paired(g.method, g.strategy, seeds, t_interval(diffs), by_budget)


def paired_to_baseline(groups: dict[tuple[str, str], Group], baseline: str = BASELINE) -> list[Paired]:
    out = []
    for (method, strategy), g in groups.items():
        base = groups.get((method, baseline))
        if strategy != baseline and base is not None and (p := paired(g, base)) is not None:
            out.append(p)
    return out


REFERENCE_METHOD = "supervised"


def _setting(method: str) -> tuple[str, str]:
    """(training method, setting): a comparison appends its other axes to the method label
    (``supervised/pool=long_tail``); methods are compared only within one setting."""
    name, _, setting = method.partition("/")
    return name, setting


def reference_methods(groups: dict[tuple[str, str], Group]) -> dict[str, str]:
    """Per setting, the method label the others are measured against: ``supervised``'s when it ran
    ``random``, else the first such; only settings where two or more methods ran ``random``."""
    by_setting: dict[str, list[str]] = defaultdict(list)
    for m, s in groups:
        if s == BASELINE:
            by_setting[_setting(m)[1]].append(m)
    out = {}
    for setting, methods in by_setting.items():
        if len(methods) >= 2:
            methods.sort()
            out[setting] = next((m for m in methods if _setting(m)[0] == REFERENCE_METHOD), methods[0])
    return out


def paired_strategies(groups: dict[tuple[str, str], Group], pairs: Sequence[tuple[str, str]]) -> list[Paired]:
    """For each (a, b) of ``pairs``: strategy a minus strategy b under every method that ran both."""
    out = []
    for a, b in pairs:
        for (method, strategy), g in groups.items():
            base = groups.get((method, b))
            if strategy == a and base is not None and (p := paired(g, base)) is not None:
                out.append(Paired(method, f"{a} − {b}", p.seeds, p.aubc, p.by_budget))
    return out


def paired_methods(groups: dict[tuple[str, str], Group]) -> list[tuple[str, Paired]]:
    """(reference, each other method's ``random`` group minus the reference's) within each setting."""
    out = []
    for setting, ref in sorted(reference_methods(groups).items()):
        base = groups[(ref, BASELINE)]
        out += [(ref, p) for (m, s), g in groups.items()
                if s == BASELINE and m != ref and _setting(m)[1] == setting and (p := paired(g, base)) is not None]
    return out


# ----------------------------------------------------------------------------- writing

def write_results_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    ordered = sorted(rows, key=lambda r: (r["method"], r["strategy"], int(r["seed"]), int(r["round"])))
    formatted = ({**r, "test_acc": f"{float(r['test_acc']):.6f}", "train_s": f"{float(r['train_s']):.3f}",
                  "select_s": f"{float(r['select_s']):.3f}"} for r in ordered)
    files.write_text(path, files.csv_text(RESULT_FIELDS, ([r[k] for k in RESULT_FIELDS] for r in formatted)))
    return path


def read_results_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**{k: files.csv_plain(v) for k, v in r.items()},
                 "seed": int(r["seed"]), "round": int(r["round"]), "n_labeled": int(r["n_labeled"]),
                 "test_acc": float(r["test_acc"]), "train_s": float(r["train_s"]),
                 "select_s": float(r["select_s"])} for r in csv.DictReader(f)]


def _pct(m: float, s: float | None = None) -> str:
    if math.isnan(m):
        return "—"
    return f"{100 * m:.2f}" if s is None or math.isnan(s) else f"{100 * m:.2f} ± {100 * s:.2f}"


def _diff(m: float, lo: float, hi: float) -> str:
    if math.isnan(lo):
        return f"{100 * m:+.2f}"
    return f"{100 * m:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _paired_table(paired_rows: list[Paired], budgets: list[int], strategy: bool = True) -> list[str]:
    first = "method | strategy" if strategy else "method"
    lines = [f"| {first} | seeds | " + " | ".join(str(n) for n in budgets) + " | AUBC | verdict |",
             "|---|---|" + "---|" * len(budgets) + "---|---|"]
    for p in paired_rows:
        cells = [_diff(*p.by_budget[n]) if n in p.by_budget else "—" for n in budgets]
        name = f"{p.method} | {p.strategy}" if strategy else p.method
        lines.append(f"| {name} | {len(p.seeds)} | " + " | ".join(cells) + f" | {_diff(*p.aubc)} | **{p.verdict}** |")
    return lines


def summary_markdown(rows: list[dict], title: str = "Comparison", caution: str | None = None,
                     pairs: Sequence[tuple[str, str]] = ()) -> str:
    groups = group_rows(rows)
    budgets = sorted({n for g in groups.values() for n in g.budgets})
    lines = [f"# {title}", ""]
    if caution:
        lines += [f"> **Caution:** {caution}", ""]
    n_seeds = sorted({len(g.seeds) for g in groups.values()})
    lines += [f"{len(groups)} method × strategy groups, {'/'.join(map(str, n_seeds))} seeds each, "
              f"{len(budgets)} budgets ({budgets[0]}–{budgets[-1]} labels). Test accuracy in %, mean ± sample "
              "standard deviation over seeds. AUBC: area under the accuracy–labels curve divided by the labels "
              "it spans (the mean accuracy over the budget range).", ""]

    lines += ["## Test accuracy", "",
              "| method | strategy | seeds | " + " | ".join(str(n) for n in budgets) + " | AUBC |",
              "|---|---|---|" + "---|" * len(budgets) + "---|"]
    for (method, strategy), g in groups.items():
        cells = [_pct(*mean_std(list(g.acc[n].values()))) if n in g.acc else "—" for n in budgets]
        lines.append(f"| {method} | {strategy} | {len(g.seeds)} | " + " | ".join(cells)
                     + f" | {_pct(*mean_std(list(g.aubc().values())))} |")

    paired = paired_to_baseline(groups)
    lines += ["", f"## Difference to `{BASELINE}` under the same method", ""]
    if not paired:
        lines.append(f"No method has a `{BASELINE}` group (and another strategy) with common seeds, so there is "
                     "no paired comparison.")
    else:
        lines += ["Percentage points, strategy minus random with the same seed (same initial labels), mean and "
                  "95 % Student-t interval over the paired seeds. The verdict reads the AUBC interval: *better* "
                  "if it lies above 0, *worse* if below, else *no detectable difference*; from fewer than "
                  f"{MIN_SEEDS} seeds there is no verdict (with 2 the interval rests on one degree of freedom).", "",
                  *_paired_table(paired, budgets)]
    others = paired_strategies(groups, pairs)
    if others:
        lines += ["", "## Other paired differences under the same method", "",
                  "Percentage points, the first strategy minus the second with the same seed; interval and verdict "
                  "as above.", "", *_paired_table(others, budgets)]
    between = paired_methods(groups)
    if between:
        refs = sorted({ref for ref, _ in between})
        lines += ["", f"## Difference between methods under `{BASELINE}` selection", "",
                  "Percentage points, each method minus the reference of its setting (" +
                  ", ".join(f"`{r}`" for r in refs) + "), both with random selection and the same seed, over the "
                  "budgets both measured; interval and verdict as above.", "",
                  *_paired_table([p for _, p in between], budgets, strategy=False)]

    lines += ["", "## Time", "",
              "Seconds per run (sum over its rounds), mean over seeds: training vs selection (signals + strategy).",
              "", "| method | strategy | train s | select s | select / train |", "|---|---|---|---|---|"]
    for (method, strategy), g in groups.items():
        tr, se = float(np.mean(list(g.train_s.values()))), float(np.mean(list(g.select_s.values())))
        lines.append(f"| {method} | {strategy} | {tr:.1f} | {se:.1f} | {se / tr if tr else math.nan:.3f} |")
    return "\n".join(lines) + "\n"


def _style(groups: dict[tuple[str, str], Group]) -> dict[tuple[str, str], dict]:
    methods = sorted({m for m, _ in groups})
    strategies = sorted({s for _, s in groups})
    import matplotlib  # heavy, and only the commands that draw need it (see _pyplot)

    palette = matplotlib.colormaps["tab10" if len(strategies) <= 10 else "tab20"]
    dashes = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    return {(m, s): {"color": palette(strategies.index(s) % palette.N),
                     "linestyle": dashes[methods.index(m) % len(dashes)],
                     "marker": markers[methods.index(m) % len(markers)]} for m, s in groups}


def plot_curves(rows: list[dict], path: str | Path, title: str = "Accuracy vs labels") -> dict:
    """Mean accuracy (%) vs labels, one line per method x strategy with a ± std band; colour =
    strategy, line style = method. Returns {label: (x, y)} read back from the drawn lines."""
    plt = _pyplot()
    groups = group_rows(rows)
    style = _style(groups)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for key, g in groups.items():
        x, m, s = g.mean_curve()
        y = 100 * np.asarray(m)
        ax.plot(x, y, label=f"{key[0]} / {key[1]}", markersize=4, linewidth=1.6, **style[key])
        sd = 100 * np.nan_to_num(np.asarray(s, dtype=float))
        ax.fill_between(x, y - sd, y + sd, color=style[key]["color"], alpha=0.12, linewidth=0)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    files.write_bytes(path, _png(fig, bbox_inches="tight"))
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
    plt.close(fig)
    return drawn


def plot_aubc(rows: list[dict], path: str | Path, title: str = "AUBC (mean accuracy over the budget range)") -> dict:
    """Left: horizontal bars of mean AUBC (%) per method x strategy, ± std, one dot per seed, on an axis
    from 0 to 100 (bars on a cut axis would turn a 1-point difference into a bar twice as long). Right:
    each strategy minus random under its method (paired by seed, mean and 95 % interval, points), on an
    axis that holds 0 and every interval. Returns {"bars": {label: (bar length, [seed dots])},
    "differences": {label: (mean, low, high)}, "xlim": {"aubc": (lo, hi), "difference": (lo, hi)}}
    read back from the figure."""
    plt = _pyplot()
    groups = group_rows(rows)
    style = _style(groups)
    keys = list(groups)
    labels = [f"{m} / {s}" for m, s in keys]
    diffs = {(p.method, p.strategy): p for p in paired_to_baseline(groups)}
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 0.35 * len(keys) + 1.8), dpi=120, sharey=True,
                                 gridspec_kw={"width_ratios": [3, 2]})
    bars, dots = [], []
    for i, key in enumerate(keys):
        per_seed = [100 * v for v in groups[key].aubc().values()]
        m, s = mean_std(per_seed)
        bars += ax.barh(i, m, xerr=0 if math.isnan(s) else s, color=style[key]["color"], alpha=0.75,
                        hatch="//" if style[key]["linestyle"] != "-" else None, edgecolor="black", linewidth=0.4)
        dots += ax.plot(per_seed, [i] * len(per_seed), "k.", markersize=4)
    ax.set_yticks(range(len(keys)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 100.0)  # AUBC is a mean accuracy: the whole range, nothing cut
    ax.set_xlabel("AUBC (%)")
    ax.grid(axis="x", alpha=0.3)
    drawn_diffs, ends = {}, [0.0]
    for i, key in enumerate(keys):
        if key not in diffs:
            continue
        mean, lo, hi = (100 * v for v in diffs[key].aubc)
        ok = not math.isnan(lo)
        dx.errorbar(mean, i, xerr=[[mean - lo], [hi - mean]] if ok else None, fmt="o", color=style[key]["color"],
                    markersize=4, capsize=3, alpha=1.0 if len(diffs[key].seeds) >= MIN_SEEDS else 0.4)
        drawn_diffs[f"{key[0]} / {key[1]}"] = (mean, lo, hi)
        ends += [lo, hi] if ok else [mean]
    span = max(abs(v) for v in ends) or 1.0
    dx.set_xlim(-1.1 * span, 1.1 * span)  # symmetric around 0, every interval inside
    dx.axvline(0.0, color="black", linewidth=0.8)
    dx.set_xlabel(f"AUBC − {BASELINE} (points, 95 % interval)")
    dx.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    files.write_bytes(path, _png(fig, bbox_inches="tight"))
    drawn = {"bars": {label: (bar.get_width(), list(d.get_xdata()))
                      for label, bar, d in zip(labels, bars, dots, strict=True)},
             "differences": drawn_diffs, "xlim": {"aubc": ax.get_xlim(), "difference": dx.get_xlim()}}
    plt.close(fig)
    return drawn


def write_report(rows: list[dict], out_dir: str | Path, title: str = "Comparison",
                 caution: str | None = None, pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """results.csv, summary.md, curves.png and aubc.png of these rows in ``out_dir``; ``caution`` (what the
    numbers cannot show, e.g. a schedule too short to rank methods) heads summary.md; ``pairs`` (a, b) of
    strategies add a table of a minus b under each method."""
    out = Path(out_dir)
    files.mkdirs(out)
    paths = {"results": out / "results.csv", "summary": out / "summary.md",
             "curves": out / "curves.png", "aubc": out / "aubc.png"}
    write_results_csv(rows, paths["results"])
    files.write_text(paths["summary"], summary_markdown(rows, title, caution, pairs))
    plot_curves(rows, paths["curves"], title=f"{title}: accuracy vs labels")
    plot_aubc(rows, paths["aubc"], title=f"{title}: AUBC")
    return paths
