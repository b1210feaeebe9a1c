"""``ssal compare SPEC.yaml``: a grid of runs (cells), run to completion, resumable, then reported.

A spec names a base recipe, overrides for every cell, and a grid::

    recipe: fashion_mnist/base.yaml      # relative to the spec file
    output_dir: runs/my-comparison       # default: runs/<spec file stem>
    title: My comparison                 # default: the spec file's stem
    caution: ...                         # optional: what its numbers cannot show (on screen, in summary.md)
    pairs: [[badge, entropy]]            # optional: strategy pairs to subtract, besides each minus random
    overrides:                           # every cell (a mapping, or a list of key=value)
      active.rounds: 5
    grid:                                # every combination is one cell
      train.method: [supervised, fixmatch]          # a recipe key: a list of values
      active.strategy: [random, entropy, coreset]
      seed: [0, 1, 2]
      method:                                       # or a named axis: label -> overrides
        simclr_fixmatch: {recipe: fashion_mnist/simclr_fixmatch.yaml}

Each cell is labelled (method, strategy, seed): an axis named ``method`` or ``strategy`` gives
those labels directly; otherwise they come from the cell's recipe (``simclr+fixmatch``,
``entropy``). The values of any other axis (``train.lr: [0.01, 0.1]``) are appended to the
method label (``supervised/lr=0.1``): such a variant is compared as a method of its own. Every cell
recipe is resolved and validated before anything is written, so a cell that makes no sense (a
strategy whose signal the objective lacks, a typo) stops the comparison with one line.

Layout of ``output_dir``: ``recipes/<cell>.yaml`` (each cell's resolved recipe: ``ssal run`` it to
redo one cell), ``cells/<cell>/`` (the run, with ``cell.json`` holding its labels),
``logs/<cell>.log``, and the report (``results.csv``, ``summary.md``, ``curves.png``,
``aubc.png``). A cell whose ``metrics.jsonl`` has all its rounds is skipped; one that was cut off
is resumed after its last committed round (``ssal run --resume``); so re-running a killed
comparison completes only what is missing.
"""

from __future__ import annotations

import ctypes
import fnmatch
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf, open_dict, read_write
from rich.console import Console

from ssal import files
from ssal.errors import ConfigError, DataError, Interrupted, did_you_mean
from ssal.experiment.pretraining import encoder_identity
from ssal.experiment.report import collect_rows, write_report
from ssal.recipe import load_recipe, read_yaml, recipe_changes, to_yaml
from ssal.run.layout import CELLS, COMPARISON, COMPARISON_KIND, LOCK, store_kind
from ssal.run.lock import Lock, RunInUse
from ssal.run.outputs import check_folder, data_folders
from ssal.run.readers import comparison_report_options, method_label, read_metrics, strategy_label
from ssal.run.store import RunDir

SPEC_KEYS = ("recipe", "output_dir", "overrides", "grid", "title", "caution", "pairs")
LABEL_AXES = ("method", "strategy")
# axes whose values the derived method / strategy labels already show
_SHOWN = {"train.method", "pretrain.method", "active.strategy", "active.initial_strategy", "seed", "recipe"}


@dataclass
class Cell:
    name: str
    labels: dict[str, Any]  # method, strategy, seed
    recipe: Path  # the base recipe file
    overrides: list[str]  # key=value, the spec's then the cell's
    cfg: Any = None  # the resolved, validated recipe

    @property
    def rounds(self) -> int:
        return self.cfg.active.rounds + 1


@dataclass
class Plan:
    spec: Path
    title: str
    output_dir: Path
    cells: list[Cell]  # the cells to run
    all_cells: list[Cell] | None = None  # the spec's cells (reported when finished); None: ``cells``
    caution: str | None = None  # what its numbers cannot show: on screen and at the head of summary.md
    pairs: tuple[tuple[str, str], ...] = ()  # (a, b): strategy a minus strategy b, besides each minus random


def _as_overrides(value: Any, where: str) -> dict[str, Any]:
    """A mapping {key: value} from a mapping or a list of key=value strings."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in value)}
    raise ConfigError(f"{where} must be a mapping of recipe keys to values (or a list of key=value)")


def _dotlist(overrides: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_") or "x"


def _axes(grid: Any, spec: Path) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """[(axis, [(label, overrides), ...]), ...] from the spec's grid."""
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise ConfigError(f"{spec}: 'grid' must be a mapping of axes (e.g. active.strategy: [random, entropy])")
    if not grid:
        raise ConfigError(f"{spec}: 'grid' is empty; give it at least one axis (e.g. seed: [0, 1, 2]), or remove "
                          "it to run the base recipe alone")
    axes = []
    for axis, values in grid.items():
        axis = str(axis)
        if isinstance(values, dict):  # a named axis: label -> overrides
            if not values:
                raise ConfigError(f"{spec}: grid axis '{axis}' is empty; give it at least one entry")
            entries = [(str(label), _as_overrides(ov, f"{spec}: grid.{axis}.{label}")) for label, ov in values.items()]
        elif isinstance(values, list):
            if not values:
                raise ConfigError(f"{spec}: grid axis '{axis}' is an empty list; give it at least one value")
            if axis in LABEL_AXES:
                raise ConfigError(f"{spec}: grid axis '{axis}' names a label; give it a mapping label -> overrides "
                                  f"(or use train.method / active.strategy for a list of values)")
            if any(isinstance(v, (dict, list)) for v in values):
                raise ConfigError(f"{spec}: grid.{axis} must list plain values (numbers, strings, true/false)")
            entries = [(str(v), {axis: v}) for v in values]
        else:
            raise ConfigError(f"{spec}: grid.{axis} must be a list of values or a mapping label -> overrides, "
                              f"got {values!r}")
        if len({label for label, _ in entries}) != len(entries):
            raise ConfigError(f"{spec}: grid.{axis} lists the same value twice")
        axes.append((axis, entries))
    return axes


def load_spec(path: str | os.PathLike, output_dir: str | None = None, overrides: list[str] = ()) -> Plan:
    """Parse a spec and resolve + validate every cell's recipe. Writes nothing. ``overrides``
    (key=value, from the command line) apply to every cell, after the spec's own."""
    spec = Path(path)
    data = read_yaml(spec, "comparison spec") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"comparison spec '{spec}' must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{spec}: unknown key '{unknown[0]}'; a comparison spec has {', '.join(SPEC_KEYS)}")
    if not isinstance(data.get("recipe"), str):
        raise ConfigError(f"{spec}: 'recipe' must name the base recipe file (relative to the spec), "
                          "e.g. recipe: ../recipes/fashion_mnist/base.yaml")
    base = (spec.parent / data["recipe"]).resolve()
    common = _as_overrides(data.get("overrides"), f"{spec}: overrides")
    for key in ("output_dir", "name"):
        if key in common or any(o.split("=", 1)[0] == key for o in overrides):
            raise ConfigError(f"{spec}: overrides may not set '{key}'; each cell gets its own")
    axes = _axes(data.get("grid"), spec)
    out = Path(output_dir or data.get("output_dir") or Path("runs") / spec.stem)

    cells: list[Cell] = []
    for combo in itertools.product(*[entries for _, entries in axes]) if axes else [()]:
        recipe, merged, extra = base, dict(common), []
        labels: dict[str, Any] = {}
        for (axis, _), (label, ov) in zip(axes, combo, strict=True):
            ov = dict(ov)
            if "recipe" in ov:
                recipe = (spec.parent / str(ov.pop("recipe"))).resolve()
            merged.update(ov)
            if axis in LABEL_AXES:
                labels[axis] = label
            elif axis not in _SHOWN:
                extra.append(f"{axis.rpartition('.')[2]}={label}")
        name_hint = "-".join(_slug(label) for label, _ in combo) or "cell"
        try:
            cfg = load_recipe(recipe, [*_dotlist(merged), *overrides,
                                       f"output_dir={json.dumps(str(out / CELLS / 'x'))}"])
        except ConfigError as e:
            raise ConfigError(f"{spec}: cell {name_hint}: {e}") from None
        if cfg.active.oracle != "simulated":
            raise ConfigError(f"{spec}: cell {name_hint} has active.oracle={cfg.active.oracle}; a comparison "
                              "simulates the labeling (its cells cannot wait for people): use active.oracle=simulated "
                              "on labeled data")
        plain = OmegaConf.to_container(cfg)
        labels["method"] = "/".join([labels.get("method") or method_label(plain), *extra])
        labels.setdefault("strategy", strategy_label(plain))
        labels["seed"] = int(cfg.seed)
        name = _slug(f"{labels['method']}__{labels['strategy']}__seed{labels['seed']}")
        cells.append(Cell(name, labels, recipe, [*_dotlist(merged), *overrides], cfg))
    names = [c.name for c in cells]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{spec}: two cells share the labels of '{dup}'; name the axis values apart "
                          "(a 'method' or 'strategy' axis with distinct labels)")
    for c in cells:  # the real output_dir of each cell (nothing in a recipe derives from it)
        with open_dict(c.cfg), read_write(c.cfg):
            c.cfg.output_dir = str(out / CELLS / c.name)
    return Plan(spec, str(data.get("title") or spec.stem), out, cells, caution=_caution(data.get("caution"), spec),
                pairs=_pairs(data.get("pairs"), spec, {c.labels["strategy"] for c in cells}))


def _pairs(value: Any, spec: Path, strategies: set[str]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                            for p in value)):
        raise ConfigError(f"{spec}: 'pairs' must list strategy pairs to subtract, e.g. pairs: [[badge, entropy]]")
    unknown = sorted({x for p in value for x in p} - strategies)
    if unknown:
        raise ConfigError(f"{spec}: pairs names '{unknown[0]}', which is not a strategy of this grid "
                          f"({', '.join(sorted(strategies))}){did_you_mean(unknown[0], strategies)}")
    for a, b in value:
        if a == b or "random" in (a, b):
            raise ConfigError(f"{spec}: pairs lists [{a}, {b}]; "
                              + ("a strategy minus itself is 0" if a == b else "every strategy is paired with random "
                                 "already") + ": remove it")
    return tuple((a, b) for a, b in value)


def _caution(value: Any, spec: Path) -> str | None:
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{spec}: 'caution' must be a sentence saying what the comparison's numbers cannot show")
    return value and " ".join(value.split())


def cell_state(cell: Cell) -> tuple[str, int]:
    """('done' | 'partial' | 'new', committed rounds). Raises a one-line error if the cell's directory
    holds a run of a different recipe (the spec changed since), is damaged, or is in use."""
    d = RunDir(cell.cfg.output_dir)
    kind = d.kind()
    if kind in ("absent", "empty"):
        return "new", 0
    if kind == "other":
        raise ConfigError(f"{d.path} holds files that are not an ssal run; move them away, or choose another "
                          "output_dir for the comparison")
    stored = d.check_resumable()["recipe"]
    now = OmegaConf.to_container(cell.cfg)
    a = {k: v for k, v in stored.items() if k not in ("name", "output_dir")}
    b = {k: v for k, v in now.items() if k not in ("name", "output_dir")}
    changes = recipe_changes(a, b)  # a key newer than the cell's ssal, at its default, is no change
    if changes:
        diff = "{}: {!r} there, {!r} now".format(*changes[0])
        raise ConfigError(f"{d.path} was run with a different recipe ({diff}); the spec changed since. Remove that "
                          "cell directory to run it anew, or choose another output_dir")
    done = len(read_metrics(d.path))
    if done >= cell.rounds and not d.verified_pool():  # 'ssal run --resume' repairs it (or says why not)
        return "partial", done
    return ("done" if done >= cell.rounds else "partial"), done


# what torchrun / accelerate launch tell the processes they start; a cell's launcher sets its own
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def launched() -> tuple[int, int]:
    """(rank, processes) of this process when ``ssal compare`` was started by torchrun or
    ``accelerate launch``: then every cell runs on that many processes. One machine only."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and int(os.environ.get("LOCAL_WORLD_SIZE", world)) != world:
        raise ConfigError(f"ssal compare runs its cells on one machine; it was launched on {world} processes across "
                          "machines: launch it with processes on one machine only (e.g. torchrun --nproc_per_node N)")
    return int(os.environ.get("RANK", "0")), world


def _launcher(procs: int) -> list[str]:
    """How a cell's command starts: ``python -m ssal``, or under torchrun with ``procs`` processes
    (``--standalone``: a free port of its own, so cells and parallel jobs never collide)."""
    if procs <= 1:
        return [sys.executable, "-m", "ssal"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
            "-m", "ssal"]


def _env(threads: int) -> dict[str, str]:
    """The environment of a cell: ``threads`` CPU threads per process (cores / (jobs x processes),
    so parallel cells do not oversubscribe the cores), or the caller's OMP_NUM_THREADS. torch
    follows MKL_NUM_THREADS over OMP_NUM_THREADS, so both are set. Results on CPU depend slightly
    on the thread count (reduction order), so a cell is bit-reproducible for the same thread
    count. The launcher variables of the comparison's own processes are not passed on."""
    n = os.environ.get("OMP_NUM_THREADS") or str(threads)
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("TORCHELASTIC_")}
    return {**env, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A cell's process ends with the comparison, even when that is killed with SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pretrain_signature(cell: Cell) -> str | None:
    """What determines the cell's pretrained encoder (the recipe's part of its cache key), or None."""
    c = cell.cfg
    if c.pretrain.method == "none":
        return None
    return json.dumps([encoder_identity(c), c.cache_dir], sort_keys=True)


def select_cells(plan: Plan, patterns: list[str]) -> Plan:
    """The plan with only the cells whose name matches one of the glob ``patterns``."""
    if not patterns:
        return plan
    keep = [c for c in plan.cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not keep:
        raise ConfigError(f"--cells {' '.join(patterns)} matches none of the {len(plan.cells)} cells (e.g. "
                          f"'{plan.cells[0].name}'); 'ssal compare {plan.spec} --dry-run' lists them")
    return Plan(plan.spec, plan.title, plan.output_dir, keep, plan.all_cells or plan.cells, plan.caution, plan.pairs)


def run_plan(plan: Plan, jobs: int = 1, progress: bool = True, procs: int = 1) -> int:
    """Run every missing cell, then write the report of every finished cell of the spec (also
    those outside a ``--cells`` selection). Returns the number of failed cells. The comparison's
    folder is locked meanwhile (each cell's run directory has its own lock too). ``procs`` > 1: every
    cell (and its pretraining) runs on that many processes under torchrun."""
    console = Console(stderr=True, soft_wrap=True)
    out = plan.output_dir
    lock = Lock(out / LOCK)
    who = lock.holder()
    if who:
        raise RunInUse(f"{out} is in use by another ssal process ({who}); wait for it to finish")
    states = {c.name: cell_state(c) for c in plan.cells}  # may raise before anything is written
    check_folder(out, lambda p: store_kind(p) == COMPARISON_KIND, "the comparison's output folder", allow=out,
                 data=[f for c in plan.all_cells or plan.cells for f in data_folders(OmegaConf.to_container(c.cfg))],
                 hint="choose another (--out DIR, or output_dir in the spec)")
    files.mkdirs(out)
    note = lock.acquire()
    try:
        if note:
            console.print(f"[yellow]note: {note}")
        # marks the folder (no other command writes into it) and keeps what 'ssal report' on it needs
        marker = {"spec": str(plan.spec), "title": plan.title, "caution": plan.caution,
                  "pairs": [list(p) for p in plan.pairs]}
        if comparison_report_options(out) != {k: marker[k] for k in ("title", "caution", "pairs")}:
            files.write_json(out / COMPARISON, files.seal(marker))
        for sub in ("recipes", CELLS, "logs"):
            files.mkdirs(out / sub)
        for c in plan.cells:
            files.write_text(out / "recipes" / f"{c.name}.yaml", to_yaml(c.cfg))
        todo = [c for c in plan.cells if states[c.name][0] != "done"]
        if plan.caution:
            console.print(f"[yellow]compare: caution: {plan.caution}")
        console.print(f"compare: {len(plan.cells)} cells in {out}: {len(plan.cells) - len(todo)} complete, "
                      f"{sum(states[c.name][0] == 'partial' for c in todo)} to resume, "
                      f"{sum(states[c.name][0] == 'new' for c in todo)} to run ({jobs} at a time"
                      + (f", {procs} processes each)" if procs > 1 else ")"))
        _pretrain_once(todo, out, console, procs)
        failed = _run_cells(plan, todo, states, jobs, progress, console, procs)
        _report(plan, console)
    finally:
        lock.release()
    if failed:
        console.print(f"[red]compare: {len(failed)} cell(s) failed: {', '.join(failed)}; re-run the same command to "
                      "retry them (complete cells are kept)")
    return len(failed)


def _pretrain_once(todo: list[Cell], out: Path, console: Any, procs: int = 1) -> None:
    """Pretraining once per distinct encoder, before the cells, so parallel cells never race for it."""
    seen: set[str] = set()
    for c in todo:
        sig = _pretrain_signature(c)
        if sig is None or sig in seen:
            continue
        seen.add(sig)
        log = out / "logs" / f"pretrain-{c.name}.log"
        console.print(f"compare: pretraining for {c.name} (or the cache) -> {log}")
        cmd = [*_launcher(procs), "pretrain", str(out / "recipes" / f"{c.name}.yaml"), "--no-progress"]
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env=_env(max(1, (os.cpu_count() or 1) // procs))).returncode
        if rc != 0:
            raise ConfigError(f"pretraining for cell {c.name} failed (exit {rc}); see {log}")


def _run_cells(plan: Plan, todo: list[Cell], states: dict, jobs: int, progress: bool, console: Any,
               procs: int = 1) -> list[str]:
    """Each cell in its own ``ssal run`` (on ``procs`` processes), ``jobs`` at a time. Returns the
    names of failed cells."""
    out = plan.output_dir
    threads = max(1, (os.cpu_count() or 1) // (max(1, jobs) * procs))
    failed: list[str] = []

    def command(c: Cell) -> list[str]:
        if states[c.name][0] == "partial":
            return [*_launcher(procs), "run", "--resume", str(c.cfg.output_dir), "--no-progress"]
        return [*_launcher(procs), "run", str(out / "recipes" / f"{c.name}.yaml"), "--force", "--no-progress"]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, on_term)
    running: list[tuple[Cell, subprocess.Popen, float, Any]] = []
    queue = list(todo)
    t0 = time.perf_counter()
    finished = 0
    try:
        while queue or running:
            while queue and len(running) < max(1, jobs):
                c = queue.pop(0)
                log = open(out / "logs" / f"{c.name}.log", "a")
                proc = subprocess.Popen(command(c), stdout=log, stderr=subprocess.STDOUT, env=_env(threads),
                                        preexec_fn=_die_with_parent)
                running.append((c, proc, time.perf_counter(), log))
            time.sleep(0.2)
            for item in list(running):
                c, proc, start, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                finished += 1
                try:
                    rows = read_metrics(c.cfg.output_dir)
                except DataError:
                    rows = []
                if proc.returncode != 0 or len(rows) < c.rounds:
                    failed.append(c.name)
                    status = f"[red]failed (exit {proc.returncode}); see {out / 'logs' / (c.name + '.log')}"
                else:
                    status = f"test acc {100 * rows[-1]['test_acc']:.2f} % at {rows[-1]['n_labeled']} labels"
                if progress or status.startswith("[red]"):
                    console.print(f"compare: [{finished}/{len(todo)}] {c.name}: {status} "
                                  f"({time.perf_counter() - start:.0f} s; {time.perf_counter() - t0:.0f} s so far)")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the cells too; their committed rounds stay
        for _c, proc, _, log in running:
            proc.terminate()
            proc.wait()
            log.close()
        raise Interrupted(f"interrupted; complete cells and committed rounds are kept: run the same 'ssal compare "
                          f"{plan.spec}' again to finish") from None
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    return failed


def _report(plan: Plan, console: Any) -> None:
    """The report of every finished cell of the spec, and each cell's labels (cell.json) for 'ssal report'."""
    reported = plan.all_cells or plan.cells
    done_dirs = [c.cfg.output_dir for c in reported if read_metrics(c.cfg.output_dir)]
    for c in reported:
        if c.cfg.output_dir in done_dirs:
            RunDir(c.cfg.output_dir).save_cell(c.labels)
    if done_dirs:
        paths = write_report(collect_rows(done_dirs), plan.output_dir, title=plan.title, caution=plan.caution,
                             pairs=plan.pairs)
        console.print(f"compare: report in {paths['summary']}, {paths['curves']}, {paths['aubc']}")
        if plan.caution:
            console.print(f"[yellow]compare: caution: {plan.caution}")
