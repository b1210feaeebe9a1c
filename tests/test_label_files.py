"""Labels from people, through the real command line: ``ssal label import`` / ``ssal label export`` against
a run with ``active.oracle: human`` that stopped to await the answers to its queries.

Every malformed label file (or a run that cannot take labels) must end with exit status 2, exactly one
line ``ssal: error: ...`` that names the culprit and, where sensible, the fix, no traceback, and not one
byte changed in the run directory (pool.json and answers.json included: neither may appear). Good files
are stored atomically in ``rounds/<batch>/answers.json``; a kill -9 while that file is written loses
nothing that was stored before, and ``ssal run --resume`` then labels each queried image exactly once.

One module fixture makes the runs (in this process, a few seconds); each test works on its own copy.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_folder_recipe_dict, tiny_recipe_dict
from PIL import Image

from ssal import faults
from ssal.cli import main
from ssal.data.label_files import QUERY_COLUMNS
from ssal.label.oracles import HumanOracle
from ssal.run.store import RunDir
from tests.test_bad_inputs import diff, snapshot

PREFIX = "ssal: error: "
CLASSES = ["red", "green", "blue"]
N_IMAGES = 24
INITIAL, BUDGET = 6, 3


# ----------------------------------------------------------------------------- helpers



def quiet_main(argv: list) -> tuple[int, str, str]:
    """``ssal.cli.main`` with its output captured (for fixtures, which cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    got = capsys.readouterr()
    return rc, got.out, got.err


def one_error_line(err: str, *fragments: str, forbidden: tuple[str, ...] = ()) -> str:
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    for f in forbidden:
        assert f not in lines[0], f"{f!r} (about the wrong thing) in {lines[0]!r}"
    return lines[0]


def refused(capsys, run: Path, label_file: Path | str, *fragments: str, forbidden: tuple[str, ...] = (),
            roots: tuple[Path, ...] = ()) -> str:
    """``ssal label import run label_file`` fails with one line and changes nothing under ``run`` (and
    ``roots``; the label file itself included)."""
    watched = (run, *roots, *([label_file] if Path(label_file).exists() else []))
    before = snapshot(*watched)
    rc, out, err = call(capsys, "label", "import", run, label_file)
    assert rc == 2, (out, err)
    line = one_error_line(err, *fragments, forbidden=forbidden)
    after = snapshot(*watched)
    assert after == before, diff(before, after)
    return line


def tmp_files(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob(".*.tmp"))


def read_queries(run: Path, folder: str = "initial") -> list[dict]:
    with open(run / "rounds" / folder / "queries.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[list], header: list[str], delimiter: str = ",", bom: bool = False,
              newline: str = "\r\n") -> Path:
    text = io.StringIO(newline="")
    w = csv.writer(text, delimiter=delimiter, lineterminator=newline)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes((("\ufeff" if bom else "") + text.getvalue()).encode("utf-8"))
    return path


def filled(run: Path, path: Path, labels: dict[int, str], folder: str = "initial", **kw) -> Path:
    """The run's queries.csv with the label column filled in for ``labels`` (index -> answer)."""
    rows = read_queries(run, folder)
    for row in rows:
        row["label"] = labels.get(int(row["index"]), "")
    return write_csv(path, [[row[c] for c in QUERY_COLUMNS] for row in rows], list(QUERY_COLUMNS), **kw)


def stored(run: Path, r: int = -1) -> dict[int, int]:
    return RunDir(run).read_answers(r)


# ----------------------------------------------------------------------------- the runs

def make_images(root: Path) -> list[str]:
    """24 16x16 RGB PNGs (red/green/blue-ish, in two folders that mean nothing): their paths relative
    to ``root``, sorted (the pool's order)."""
    rng = np.random.default_rng(0)
    colours = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]
    names = []
    for k in range(N_IMAGES):
        pixels = np.array(colours[k % 3])[None, None, :] + rng.integers(-20, 20, (16, 16, 3))
        name = f"{'a' if k < N_IMAGES // 2 else 'b'}/img{k:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
        names.append(name)
    return sorted(names)


@dataclass
class World:
    base: Path
    images: Path
    names: list[str]  # pool index -> path relative to data.root
    stopped: Path  # human run (rounds=1) that stopped awaiting the initial batch: no pool.json yet
    other: Path  # another human run (rounds=0) awaiting its initial batch: another run id
    complete: Path  # ``other`` labeled and run to the end
    second: Path  # ``stopped`` labeled and resumed: awaits rounds/r00, pool.json holds the initial set
    simulated: Path  # a run with active.oracle=simulated (digits)
    queried: list[int]  # the initial batch of ``stopped``, in query order
    truth: dict[int, str]  # a plausible answer for every image of the pool (its colour)

    def copy(self, which: str, tmp: Path, name: str = "run") -> Path:
        dst = tmp / name
        shutil.copytree(getattr(self, which), dst)
        return dst


def human_recipe(path: Path, out: Path, images: Path, cache: Path, **active) -> Path:
    recipe = tiny_folder_recipe_dict(out, cache, images, CLASSES, data={"channels": 3}, pretrain={"method": "none"},
                                     train={"batch_size": 8, "eval_batch_size": 64},
                                     active={"initial": INITIAL, "budget": BUDGET, **active})
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("label_files")
    images, cache = base / "images", base / "cache"
    names = make_images(images)
    truth = {i: CLASSES[int(names[i][-6:-4]) % 3] for i in range(N_IMAGES)}

    stopped = base / "stopped"
    rc, out, err = quiet_main(["run", human_recipe(base / "stopped.yaml", stopped, images, cache), "--no-progress"])
    assert rc == 0, err
    assert f"{INITIAL} images await labels" in out and "ssal label import" in out, out
    queried = RunDir(stopped).read_selection(-1)

    other = base / "other"
    rc, out, err = quiet_main(["run", human_recipe(base / "other.yaml", other, images, cache, rounds=0),
                               "--no-progress"])
    assert rc == 0, err

    complete = base / "complete"
    shutil.copytree(other, complete)
    other_queried = RunDir(other).read_selection(-1)
    rc, out, err = quiet_main(["label", "import", complete,
                               filled(complete, base / "complete.csv", {i: truth[i] for i in other_queried})])
    assert rc == 0, err
    rc, out, err = quiet_main(["run", "--resume", complete, "--no-progress"])
    assert rc == 0 and "done" in out, (out, err)

    second = base / "second"
    shutil.copytree(stopped, second)
    rc, out, err = quiet_main(["label", "import", second,
                               filled(second, base / "second.csv", {i: truth[i] for i in queried})])
    assert rc == 0, err
    rc, out, err = quiet_main(["run", "--resume", second, "--no-progress"])
    assert rc == 0 and f"{BUDGET} images await labels" in out, (out, err)

    simulated = base / "simulated"
    sim = tiny_recipe_dict(simulated, cache_dir=str(cache), data={"pool_size": 60, "test_size": 20},
                           train={"steps": 3, "batch_size": 8, "eval_batch_size": 64},
                           active={"initial": 6, "budget": 3, "rounds": 0, "subset": None})
    (base / "sim.yaml").write_text(yaml.safe_dump(sim))
    rc, out, err = quiet_main(["run", base / "sim.yaml", "--no-progress"])
    assert rc == 0, err
    return World(base, images, names, stopped, other, complete, second, simulated, queried, truth)


@pytest.fixture
def run(world, tmp_path) -> Path:
    """A copy of the stopped run (awaiting rounds/initial, no pool.json)."""
    return world.copy("stopped", tmp_path)


# ----------------------------------------------------------------------------- what the stopped run wrote

def test_a_human_run_stops_with_its_queries(world):
    run = world.stopped
    rows = read_queries(run)
    assert list(rows[0]) == list(QUERY_COLUMNS)
    record = json.loads((run / "rounds" / "initial" / "selected.json").read_text())
    assert [int(r["index"]) for r in rows] == record["indices"] == world.queried
    assert len(world.queried) == INITIAL == len(set(world.queried))
    assert [r["path"] for r in rows] == record["paths"] == [world.names[i] for i in world.queried]
    assert [int(r["query"]) for r in rows] == list(range(1, INITIAL + 1))
    assert {r["run"] for r in rows} == {RunDir(run).run_id()} != {RunDir(world.other).run_id()}
    assert all(r["label"] == "" for r in rows)
    assert (run / "rounds" / "initial" / "queries.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "pool.json").exists() and not (run / "rounds" / "initial" / "answers.json").exists()
    assert (world.second / "pool.json").is_file()  # the later state, for the cases below


# ----------------------------------------------------------------------------- malformed label files

@dataclass
class Env:
    tmp: Path
    run: Path
    world: World

    @property
    def q(self) -> list[int]:
        return self.world.queried

    def path(self, i: int) -> str:
        return self.world.names[i]

    def file(self, name: str, content: bytes | str) -> Path:
        p = self.tmp / name
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    def json(self, name: str, obj) -> Path:
        return self.file(name, json.dumps(obj, indent=1))

    def run_id(self) -> str:
        return RunDir(self.run).run_id()


def _unknown_path(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.path(e.q[0]), "red"], ["c/nothere.png", "blue"]], ["path", "label"])
    return f, ("line 3", "'c/nothere.png'", "not one of the images queried in rounds/initial", "relative to data.root")


def _index_out_of_range(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.q[0], "red"], [N_IMAGES + 75, "red"]], ["index", "label"])
    return f, ("line 3", f"index {N_IMAGES + 75}", f"0..{N_IMAGES - 1}")


def _index_not_queried(e: Env):
    other = next(i for i in range(N_IMAGES) if i not in e.q)
    f = write_csv(e.tmp / "l.csv", [[e.q[0], "red"], [other, "green"]], ["index", "label"])
    return f, (f"index {other}", "did not query", "rounds/initial/queries.csv")


def _path_not_queried(e: Env):
    other = next(i for i in range(N_IMAGES) if i not in e.q)
    f = write_csv(e.tmp / "l.csv", [[e.path(other), "green"]], ["path", "label"])
    return f, (f"'{e.path(other)}'", "not one of the images queried")


def _index_and_path_disagree(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.q[0], e.path(e.q[0]), "red"], [e.q[1], e.path(e.q[2]), "red"]],
                  ["index", "path", "label"])
    return f, ("line 3", f"index {e.q[1]}", f"'{e.path(e.q[2])}'", f"index {e.q[2]}", "fix one of them")


def _row_names_no_image(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.q[0], e.path(e.q[0]), "red"], ["", "", "green"]], ["index", "path", "label"])
    return f, ("line 3", "names no image", "index or a path")


def _unknown_class(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.path(e.q[0]), "red"], [e.path(e.q[1]), "gren"]], ["path", "label"])
    return f, ("line 3", "unknown class 'gren'", "did you mean 'green'", "red, green, blue", "skip")


def _class_in_capitals(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.path(e.q[0]), "RED"]], ["path", "label"])
    return f, ("line 2", "'RED'", "did you mean 'red'")


def _conflicting_duplicates(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.path(e.q[0]), "red"], [e.path(e.q[1]), "blue"], [e.path(e.q[0]), "green"]],
                  ["path", "label"])
    return f, ("line 2", "line 4", f"{e.path(e.q[0])}", "'red'", "'green'", "keep one")


def _duplicates_by_index_and_path(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.q[0], "", "red"], ["", e.path(e.q[0]), "blue"]], ["index", "path", "label"])
    return f, ("line 2", "line 3", "'red'", "'blue'")


def _header_only(e: Env):
    return e.file("l.csv", ",".join(QUERY_COLUMNS) + "\r\n"), ("no labels", "fill in the label column")


def _all_labels_blank(e: Env):
    return filled(e.run, e.tmp / "l.csv", {}), ("no labels", "fill in the label column")


def _no_label_column(e: Env):
    f = write_csv(e.tmp / "l.csv", [[e.path(e.q[0]), "red"]], ["path", "class"])
    return f, ("'label' column", "path, class", "queries.csv")


def _not_utf8(e: Env):
    return e.file("l.csv", f"path,label\n{e.path(e.q[0])},caf\xe9\n".encode("latin-1")), ("not UTF-8", "CSV UTF-8")


def _empty_file(e: Env):
    return e.file("l.csv", b""), ("is empty", "queries.csv")


def _a_folder(e: Env):
    (e.tmp / "answers_dir").mkdir()
    return e.tmp / "answers_dir", ("is a folder", "CSV or Label Studio JSON")


def _missing_file(e: Env):
    return e.tmp / "nowhere.csv", ("nowhere.csv", "not found")


def _queries_of_another_run(e: Env):
    other = e.world.other
    f = filled(other, e.tmp / "l.csv", {i: "red" for i in RunDir(other).read_selection(-1)})
    return f, ("another run", RunDir(other).run_id(), e.run_id(), "queries.csv of this run")


def _ls_invalid_json(e: Env):
    return e.file("l.json", '[{"data": {"ssal_index": 1}, '), ("not valid JSON", "line 1", "Label Studio")


def _ls_not_a_list(e: Env):
    return e.file("l.json", "42\n"), ("not a Label Studio export", "list of tasks")


def _ls_list_of_numbers(e: Env):
    return e.json("l.json", [e.q[0], e.q[1]]), ("not a Label Studio export", "list of tasks")


def _ls_object_of_tasks(e: Env):
    """A JSON object that holds the tasks (not a task itself, not a list)."""
    tasks = [{"data": {"ssal_index": i}, "annotations": [_annotation("red")]} for i in e.q]
    return e.json("l.json", {"tasks": tasks}), ("not a Label Studio export", "list of tasks")


def _ls_two_choices(e: Env):
    tasks = [{"id": 1, "data": {"ssal_index": e.q[0], "ssal_run": e.run_id()}, "annotations": [_annotation("red")]},
             {"id": 2, "data": {"ssal_index": e.q[1], "ssal_run": e.run_id()},
              "annotations": [_annotation("red", "blue")]}]
    return e.json("l.json", tasks), ("task 2", "2 classes", "red, blue", "one per image")


def _ls_min_two_choices(e: Env):
    """JSON-MIN writes a multi-choice answer as {"choices": [...]}: the same mistake as above."""
    tasks = [{"ssal_index": e.q[0], "ssal_run": e.run_id(), "label": "red"},
             {"ssal_index": e.q[1], "ssal_run": e.run_id(), "label": {"choices": ["red", "blue"]}}]
    return e.json("l.json", tasks), ("task 2", "2 classes", "one per image")


def _ls_result_value_not_an_object(e: Env):
    """A hand-made or converted export whose result value is the class name itself, not {"choices": [...]}."""
    tasks = [{"data": {"ssal_index": e.q[0]}, "annotations": [{"result": [{"type": "choices", "value": "red"}]}]}]
    return e.json("l.json", tasks), ("task 1",)


def _ls_another_run(e: Env):
    tasks = [{"data": {"ssal_index": i, "ssal_run": "0123456789ab", "image": "/data/local-files/?d=" + e.path(i)},
              "annotations": [_annotation("red")]} for i in e.q]
    return e.json("l.json", tasks), ("another run", "0123456789ab", e.run_id())


BAD_FILES = [_unknown_path, _index_out_of_range, _index_not_queried, _path_not_queried, _index_and_path_disagree,
             _row_names_no_image, _unknown_class, _class_in_capitals, _conflicting_duplicates,
             _duplicates_by_index_and_path, _header_only, _all_labels_blank, _no_label_column, _not_utf8, _empty_file,
             _a_folder, _missing_file, _queries_of_another_run, _ls_invalid_json, _ls_not_a_list,
             _ls_list_of_numbers, _ls_object_of_tasks, _ls_two_choices, _ls_min_two_choices,
             _ls_result_value_not_an_object, _ls_another_run]


def _annotation(*choices: str, cancelled: bool = False, updated: str = "2024-05-01T10:00:00.000000Z") -> dict:
    return {"id": 7, "completed_by": 1, "was_cancelled": cancelled, "ground_truth": False, "lead_time": 3.2,
            "created_at": updated, "updated_at": updated,
            "result": [] if not choices else [{"id": "x1", "from_name": "label", "to_name": "image",
                                               "type": "choices", "origin": "manual",
                                               "value": {"choices": list(choices)}}]}


@pytest.mark.parametrize("case", BAD_FILES, ids=[f.__name__.lstrip("_") for f in BAD_FILES])
def test_a_malformed_label_file_is_refused_with_one_line(case, world, tmp_path, capsys):
    run = world.copy("stopped", tmp_path)
    label_file, fragments = case(Env(tmp_path, run, world))
    refused(capsys, run, label_file, *fragments)
    assert not (run / "pool.json").exists() and not (run / "rounds" / "initial" / "answers.json").exists()


@pytest.mark.parametrize("case", ["in_pool_index", "unknown_class", "conflicting", "initial_batch_again"])
def test_a_malformed_file_for_a_later_batch_leaves_pool_and_answers_as_they_were(case, world, tmp_path, capsys):
    """The run awaits rounds/r00: pool.json and rounds/initial/answers.json exist and stay byte-identical."""
    run = world.copy("second", tmp_path)
    r00 = [int(r["index"]) for r in read_queries(run, "r00")]
    initial = world.queried
    if case == "in_pool_index":  # an image of the pool (labeled in the initial batch) answered otherwise now
        other = next(c for c in CLASSES if c != world.truth[initial[0]])
        f = write_csv(tmp_path / "l.csv", [[r00[0], "red"], [initial[0], other]], ["index", "label"])
        fragments = (f"index {initial[0]}: '{other}', the pool holds '{world.truth[initial[0]]}'",
                     "otherwise than the run took them", "rounds/r00/queries.csv")
    elif case == "unknown_class":
        f = filled(run, tmp_path / "l.csv", {i: "bleu" for i in r00}, "r00")
        fragments = ("unknown class 'bleu'", "did you mean 'blue'")
    elif case == "conflicting":
        f = write_csv(tmp_path / "l.csv", [[r00[0], "red"], [r00[0], "blue"]], ["index", "label"])
        fragments = ("line 2", "line 3", "'red'", "'blue'")
    else:  # the filled-in queries of the batch that is already in the pool
        f = filled(run, tmp_path / "l.csv", {i: world.truth[i] for i in initial}, "initial")
        fragments = ("answers only images of earlier batches", "none of the open batch rounds/r00")
    assert (run / "pool.json").is_file() and (run / "rounds" / "initial" / "answers.json").is_file()
    refused(capsys, run, f, *fragments)
    assert not (run / "rounds" / "r00" / "answers.json").exists()


# ----------------------------------------------------------------------------- runs that take no labels

def test_a_run_with_a_simulated_oracle_takes_no_labels(world, tmp_path, capsys):
    run = world.copy("simulated", tmp_path)
    f = write_csv(tmp_path / "l.csv", [[0, "red"]], ["index", "label"])
    refused(capsys, run, f, "active.oracle=simulated", "active.oracle=human")
    rc, out, err = call(capsys, "label", "export", run, "--out", tmp_path / "t.json")
    assert rc == 2 and not (tmp_path / "t.json").exists()
    one_error_line(err, "active.oracle=simulated")


def test_a_folder_that_is_not_a_run(world, tmp_path, capsys):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "notes.txt").write_text("do not touch\n")
    f = filled(world.stopped, tmp_path / "l.csv", {i: "red" for i in world.queried})
    # the message is about `ssal label import RUN_DIR`, so it must not send the user to --resume
    refused(capsys, folder, f, f"'{folder}'", "not a run directory", forbidden=("--resume",))
    refused(capsys, tmp_path / "absent", f, "does not exist", forbidden=("--resume",))
    assert not (tmp_path / "absent").exists()


def test_a_complete_run_awaits_no_labels(world, tmp_path, capsys):
    run = world.copy("complete", tmp_path)
    f = filled(world.other, tmp_path / "l.csv", {i: "red" for i in RunDir(world.other).read_selection(-1)})
    refused(capsys, run, f, "is complete", "awaits no labels")


def test_a_run_without_an_open_batch(world, tmp_path, capsys):
    """Killed while it was being made, before its first selection: nothing awaits labels yet."""
    run = world.copy("stopped", tmp_path)
    shutil.rmtree(run / "rounds" / "initial")
    f = filled(world.stopped, tmp_path / "l.csv", {i: "red" for i in world.queried})
    refused(capsys, run, f, "no open query batch", f"ssal run --resume {run}")


def _lock_holder(lock: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom ssal.run.lock import Lock\nLock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(600)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_answers_are_imported_and_exported_while_a_run_holds_its_lock(run, world, tmp_path, capsys):
    """A run pretraining or training holds the run's lock for minutes; people's answers go in meanwhile."""
    f = filled(run, tmp_path / "l.csv", {i: world.truth[i] for i in world.queried})
    holder = _lock_holder(run / ".lock")
    try:
        rc, out, err = call(capsys, "label", "import", run, f)
        assert rc == 0, err
        assert stored(run) == {i: CLASSES.index(world.truth[i]) for i in world.queried}
        rc, out, err = call(capsys, "label", "export", run, "--out", tmp_path / "t.json")
        assert rc == 0 and (tmp_path / "t.json").is_file(), err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow  # a lock holder in another process
def test_another_process_holding_the_answers_lock_is_named(run, world, tmp_path, capsys):
    f = filled(run, tmp_path / "l.csv", {i: world.truth[i] for i in world.queried})
    holder = _lock_holder(run / ".answers.lock")
    try:
        refused(capsys, run, f, "in use by another ssal process", f"pid {holder.pid}")
        rc, out, err = call(capsys, "label", "export", run, "--out", tmp_path / "t.json")
        assert rc == 2 and not (tmp_path / "t.json").exists()
        one_error_line(err, f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    rc, out, err = call(capsys, "label", "import", run, f)  # the holder is gone: its lock with it
    assert rc == 0 and err == "", err
    assert f"took over the lock of pid {holder.pid}" in out
    assert stored(run) == {i: CLASSES.index(world.truth[i]) for i in world.queried}
    assert not (run / ".lock").exists()  # released with the import


# ----------------------------------------------------------------------------- good files

def _expect_all(world: World, run: Path, labels: dict[int, str]) -> None:
    want = {i: (-1 if labels[i].lower() in ("skip", "unsure") else CLASSES.index(labels[i])) for i in world.queried}
    assert stored(run) == want
    body = json.loads((run / "rounds" / "initial" / "answers.json").read_text())
    assert body["round"] == -1 and "checksum" in body
    assert HumanOracle(RunDir(run)).missing(-1, torch.tensor(world.queried)) == 0
    assert not (run / "pool.json").exists() and tmp_files(run) == []


def test_excel_csv_with_a_byte_order_mark_imports(run, world, tmp_path, capsys):
    labels = {i: world.truth[i] for i in world.queried}
    f = filled(run, tmp_path / "excel.csv", labels, bom=True, newline="\r\n")
    assert f.read_bytes().startswith(b"\xef\xbb\xbfquery,index")
    rc, out, err = call(capsys, "label", "import", run, f)
    assert rc == 0 and err == "", err
    assert f"imported {INITIAL} answers for rounds/initial" in out and f"all {INITIAL} answered" in out
    assert f"ssal run --resume {run}" in out
    _expect_all(world, run, labels)


def test_semicolon_separated_csv_with_decimal_commas_imports(world, tmp_path, capsys):
    """What a spreadsheet in a comma-decimal locale saves: ';' between cells, '0,512' confidences (the
    batch after round 0 has suggestions and confidences)."""
    run = world.copy("second", tmp_path)
    rows = read_queries(run, "r00")
    assert all(r["suggestion"] in CLASSES and r["confidence"] for r in rows)
    labels = {int(r["index"]): world.truth[int(r["index"])] for r in rows}
    body = [[r["query"], r["index"], r["path"], r["suggestion"], r["confidence"].replace(".", ","),
             labels[int(r["index"])], r["run"]] for r in rows]
    f = write_csv(tmp_path / "semi.csv", body, list(QUERY_COLUMNS), delimiter=";")
    assert f.read_text().count(";") == 6 * (len(rows) + 1)
    pool_before = (run / "pool.json").read_bytes()
    rc, out, err = call(capsys, "label", "import", run, f)
    assert rc == 0 and err == "", err
    assert f"imported {len(rows)} answers for rounds/r00" in out
    assert stored(run, 0) == {i: CLASSES.index(y) for i, y in labels.items()}
    assert (run / "pool.json").read_bytes() == pool_before  # the pool changes on --resume, not on import


def test_semicolon_separated_csv_with_path_and_label_only(run, world, tmp_path, capsys):
    labels = {i: world.truth[i] for i in world.queried}
    f = write_csv(tmp_path / "semi.csv", [[world.names[i], y] for i, y in labels.items()], ["path", "label"],
                  delimiter=";")
    rc, out, err = call(capsys, "label", "import", run, f)
    assert rc == 0 and err == "", err
    _expect_all(world, run, labels)


def test_identical_duplicates_are_accepted(run, world, tmp_path, capsys):
    q = world.queried
    rows = [[i, world.names[i], world.truth[i]] for i in q] + [[q[0], "", world.truth[q[0]]],
                                                              ["", world.names[q[0]], world.truth[q[0]]]]
    rc, out, err = call(capsys, "label", "import", run, write_csv(tmp_path / "d.csv", rows, ["index", "path", "label"]))
    assert rc == 0 and err == "", err
    assert f"imported {INITIAL} answers" in out and f"all {INITIAL} answered" in out
    _expect_all(world, run, {i: world.truth[i] for i in q})


def test_skip_and_unsure_are_answers_and_the_next_round_buys_more(run, world, tmp_path, capsys):
    q = world.queried
    labels = {i: world.truth[i] for i in q}
    labels[q[1]], labels[q[4]] = "skip", "Unsure"
    rc, out, err = call(capsys, "label", "import", run, filled(run, tmp_path / "l.csv", labels))
    assert rc == 0 and err == "", err
    assert "2 skipped" in out and f"all {INITIAL} answered" in out, out
    _expect_all(world, run, labels)
    assert stored(run)[q[1]] == stored(run)[q[4]] == -1
    # the run goes on: the skipped images are answered (in the pool as -1), round 0 trains on the others and
    # round 0's batch makes up for the two skips
    rc, out, err = call(capsys, "run", "--resume", run, "--no-progress")
    assert rc == 0 and err == "", err
    assert f"{INITIAL - 2} labels" in out
    pool = json.loads((run / "pool.json").read_text())
    assert sorted(pool["labeled"]) == sorted([i, stored(run)[i], 0] for i in q)
    assert len(RunDir(run).read_selection(0)) == BUDGET + 2


def test_a_partial_import_then_the_rest_merges_and_reports_changes(run, world, tmp_path, capsys):
    q = world.queried
    first = {q[0]: "red", q[1]: "green"}
    rc, out, err = call(capsys, "label", "import", run, filled(run, tmp_path / "a.csv", first))
    assert rc == 0 and err == "", err
    assert "imported 2 answers" in out and f"{INITIAL - 2} of {INITIAL} images still await labels" in out, out
    assert "--resume" not in out
    assert stored(run) == {q[0]: 0, q[1]: 1}
    assert HumanOracle(RunDir(run)).missing(-1, torch.tensor(q)) == INITIAL - 2
    # a second file: the rest, and q[1] changed from green to blue (q[0] left blank: kept)
    second = {i: world.truth[i] for i in q[2:]}
    second[q[1]] = "blue"
    rc, out, err = call(capsys, "label", "import", run, filled(run, tmp_path / "b.csv", second))
    assert rc == 0 and err == "", err
    assert f"imported {INITIAL - 1} answers" in out and "(1 changed)" in out and f"all {INITIAL} answered" in out
    _expect_all(world, run, {**second, q[0]: "red"})


def test_label_studio_json_export_imports(run, world, tmp_path, capsys):
    """The full JSON export: tasks with data, annotations (two that agree are one answer; a cancelled one
    is a skip), predictions; unannotated tasks are left for later."""
    q, rid = world.queried, RunDir(run).run_id()
    tasks = []
    for k, i in enumerate(q):
        data = {"ssal_index": i, "ssal_run": rid, "query": k + 1, "image": f"/data/local-files/?d={world.names[i]}",
                "path": world.names[i]}
        task = {"id": 100 + k, "data": data, "predictions": [], "meta": {}, "project": 3,
                "created_at": "2024-05-01T09:00:00.000000Z", "updated_at": "2024-05-01T10:00:00.000000Z",
                "annotations": [_annotation(world.truth[i])]}
        tasks.append(task)
    tasks[0]["annotations"] = [_annotation("green", updated="2024-05-01T10:00:00.000000Z"),
                               _annotation("green", updated="2024-05-02T08:00:00.000000Z")]  # two who agree
    tasks[1]["annotations"] = [_annotation(cancelled=True)]  # the annotator skipped it
    tasks[2]["annotations"] = []  # not labeled yet
    f = tmp_path / "project-3-at-2024-05-02.json"
    f.write_text(json.dumps(tasks, indent=2))
    rc, out, err = call(capsys, "label", "import", run, f)
    assert rc == 0 and err == "", err
    assert f"imported {INITIAL - 1} answers" in out and "1 skipped" in out and f"1 of {INITIAL} images" in out, out
    want = {i: CLASSES.index(world.truth[i]) for i in q[3:]}
    assert stored(run) == {q[0]: CLASSES.index("green"), q[1]: -1, **want}


def test_label_studio_json_min_export_imports(run, world, tmp_path, capsys):
    q, rid = world.queried, RunDir(run).run_id()
    tasks = [{"ssal_index": i, "ssal_run": rid, "query": k + 1, "image": f"/data/local-files/?d={world.names[i]}",
              "path": world.names[i], "id": 100 + k, "label": world.truth[i], "annotator": 1, "annotation_id": k,
              "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T10:00:00.000000Z",
              "lead_time": 2.5} for k, i in enumerate(q)]
    f = tmp_path / "min.json"
    f.write_text(json.dumps(tasks))
    rc, out, err = call(capsys, "label", "import", run, f)
    assert rc == 0 and err == "", err
    _expect_all(world, run, {i: world.truth[i] for i in q})
    # the bare flat form: an index and a label per task
    run2 = world.copy("stopped", tmp_path, "run2")
    f2 = tmp_path / "flat.json"
    f2.write_text(json.dumps([{"ssal_index": i, "label": "red"} for i in q]))
    rc, out, err = call(capsys, "label", "import", run2, f2)
    assert rc == 0 and err == "", err
    _expect_all(world, run2, {i: "red" for i in q})


def test_label_studio_export_then_import_of_the_annotated_tasks(run, world, tmp_path, capsys):
    before = snapshot(run)
    out_json = tmp_path / "t.json"
    rc, out, err = call(capsys, "label", "export", run, "--format", "labelstudio", "--out", out_json)
    assert rc == 0 and err == "", err
    assert f"wrote {INITIAL} Label Studio tasks" in out
    assert snapshot(run) == before  # exporting elsewhere writes nothing in the run
    tasks = json.loads(out_json.read_text())
    assert len(tasks) == INITIAL
    assert [t["data"]["ssal_index"] for t in tasks] == world.queried
    for t in tasks:
        i = t["data"]["ssal_index"]
        assert t["data"]["image"].endswith(world.names[i]) and t["data"]["image"].startswith("/data/local-files/")
        assert t["data"]["ssal_run"] == RunDir(run).run_id()
    xml = (tmp_path / "t.xml").read_text()
    assert all(f'<Choice value="{c}"/>' in xml for c in CLASSES) and '<Image name="image" value="$image"/>' in xml
    # what Label Studio gives back: the tasks with ids, annotations and its own fields added
    for k, t in enumerate(tasks):
        t.update(id=k + 1, annotations=[_annotation(world.truth[t["data"]["ssal_index"]])], drafts=[], project=1)
    back = tmp_path / "export.json"
    back.write_text(json.dumps(tasks))
    rc, out, err = call(capsys, "label", "import", run, back)
    assert rc == 0 and err == "", err
    _expect_all(world, run, {i: world.truth[i] for i in world.queried})


# ----------------------------------------------------------------------------- real processes

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200", **extra}


def ssal(*args, failpoints: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssal", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=_env(**({faults.ENV: failpoints} if failpoints else {})))


@pytest.mark.slow  # a process group or a real process: 9-21 s; CI runs it
def test_the_command_line_in_a_real_process(run, world, tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [[world.names[world.queried[0]], "gren"]], ["path", "label"])
    before = snapshot(run)
    proc = ssal("label", "import", run, bad)
    assert proc.returncode == 2 and proc.stdout == "", proc
    one_error_line(proc.stderr, "unknown class 'gren'", "did you mean 'green'")
    assert snapshot(run) == before
    good = filled(run, tmp_path / "good.csv", {i: world.truth[i] for i in world.queried})
    proc = ssal("label", "import", run, good)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert f"all {INITIAL} answered" in proc.stdout
    _expect_all(world, run, {i: world.truth[i] for i in world.queried})


@pytest.mark.slow  # an import in a process, killed with -9
@pytest.mark.parametrize("previous", [False, True], ids=["first_import", "after_a_partial_import"])
def test_kill_9_while_answers_json_is_written_loses_nothing(previous, run, world, tmp_path, capsys):
    q = world.queried
    answers = tmp_path / "answers_before.json"
    if previous:
        rc, out, err = call(capsys, "label", "import", run, filled(run, tmp_path / "part.csv", {q[0]: "blue"}))
        assert rc == 0, err
        answers.write_bytes((run / "rounds" / "initial" / "answers.json").read_bytes())
    labels = {i: world.truth[i] for i in q}
    full = filled(run, tmp_path / "full.csv", labels)
    before = snapshot(run)

    proc = ssal("label", "import", run, full, failpoints="write:answers.json=kill")
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    target = run / "rounds" / "initial" / "answers.json"
    if previous:  # the previous complete file, byte for byte
        assert target.read_bytes() == answers.read_bytes()
        assert stored(run) == {q[0]: CLASSES.index("blue")}
    else:
        assert not target.exists()
        assert stored(run) == {}
    # at most the killed write's temporary file, which no reader takes for the answers
    assert all(p.name.startswith(".answers.json.") and p.name.endswith(".tmp") for p in tmp_files(run))
    after = snapshot(run)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    locks = {".lock", ".answers.lock"}  # a killed holder leaves its lock file; the next taker reports it
    assert {Path(k).name for k in changed} <= locks | {p.name for p in tmp_files(run)}, diff(before, after)

    # importing again works (the dead process's lock is taken over), then --resume goes on
    rc, out, err = call(capsys, "label", "import", run, full)
    assert rc == 0 and err == "", err
    assert f"all {INITIAL} answered" in out and ("(1 changed)" in out) == previous
    assert stored(run) == {i: CLASSES.index(y) for i, y in labels.items()}
    rc, out, err = call(capsys, "run", "--resume", run, "--no-progress")
    assert rc == 0 and err == "", err
    assert f"resuming {run} at round 0 ({INITIAL} labels)" in out
    pool = json.loads((run / "pool.json").read_text())
    entries = [i for i, _, _ in pool["labeled"]]
    assert len(entries) == len(set(entries)) == INITIAL  # each queried image exactly once, nothing else
    assert sorted(pool["labeled"]) == sorted([i, CLASSES.index(labels[i]), 0] for i in q)
    assert tmp_files(run) == []  # the stale temporary file is gone
    assert len(RunDir(run).read_selection(0)) == BUDGET and (run / "rounds" / "r00" / "queries.csv").is_file()
