"""No command writes inside a run directory, a comparison folder or a data folder except through the run's
own API, and ``--out`` onto an existing file that ssal did not write needs ``--force`` (issue 33).

Each output route is tried against every kind of place it must not write: each state file of a run (and
new names beside them), the same places reached through links, dotted paths and linked parent folders,
runs other than the one given (also one of an ssal without run.json), comparison folders (also one made
before compare.json), and the data folders of a labeled layout (train/, test/) and of a human run (data.root,
data.test_root, ``--images``). A refusal is exit 2, one line naming the path as given and the folder it lies
in, and every folder involved byte-identical afterwards. The positive side: ``--force`` replaces a file of
the user's, a file ssal wrote for the same command is replaced without it, and a run whose answers a
refused export aimed at resumes with exactly those answers."""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_bad_inputs import diff, snapshot
from test_human_loop import CLASSES, colour_image, folder_recipe, one_error_line, one_thread, read_csv  # noqa: F401

from ssal.cli import main

INITIAL = 12  # the first batch of both runs
N_TRAIN, N_TEST, N_PHOTOS = 36, 12, 40
PREDICTION_HEADER = ["path", "index", "prediction", "confidence", "label"]  # README, "Label your own images"


# ----------------------------------------------------------------------------- the world, built once

@dataclass
class World:
    tmp: Path
    labeled: Path  # data.root of the labeled layout: train/<class>/, test/<class>/
    photos: Path  # data.root of the human run (flat, unlabeled)
    held: Path  # its data.test_root (one subfolder per class)
    trained: Path  # a simulated run on `labeled`, round 0 trained
    human: Path  # a human run on `photos`, its first batch answered (answers.json), not yet resumed
    labeled_recipe: dict
    human_recipe: dict
    truth: dict[str, str]  # photos: relative path -> class
    answered: dict[str, str]  # the answers the human run holds: path -> class

    def data(self) -> list[Path]:
        return [self.labeled, self.photos, self.held]


def _call(*args: str) -> int:
    try:
        return main([*args, *(["--no-progress"] if args[0] in ("run", "predict") else [])])
    except SystemExit as e:  # an argparse error
        return int(e.code)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("hostile_outputs")
    rng = np.random.default_rng(3)
    labeled = tmp / "labeled"
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for i in range(n):
            c = i % 3
            p = labeled / split / CLASSES[c] / f"img_{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colour_image(rng, c)).save(p)
    photos, held = tmp / "photos", tmp / "held"
    photos.mkdir()
    truth = {}
    for i in range(N_PHOTOS):
        c = int(rng.integers(0, 3))
        Image.fromarray(colour_image(rng, c)).save(photos / f"p{i:02d}.png")
        truth[f"p{i:02d}.png"] = CLASSES[c]
    for i in range(6):
        p = held / CLASSES[i % 3] / f"t{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour_image(rng, i % 3)).save(p)

    small = {"model": {"backbone": "cnn_small"}, "train": {"steps": 3}}
    lab_recipe = folder_recipe(tmp, labeled, "labeled", data={"classes": None}, **small,
                               active={"oracle": "simulated", "initial": INITIAL, "budget": 6, "rounds": 0})
    assert _call("run", str(lab_recipe)) == 0
    hum_recipe = folder_recipe(tmp, photos, "human", data={"test_root": str(held)}, **small,
                               active={"initial": INITIAL, "budget": 6, "rounds": 2})
    assert _call("run", str(hum_recipe)) == 0
    human = tmp / "runs" / "human"
    queried = [r["path"] for r in read_csv(human / "rounds" / "initial" / "queries.csv")]
    assert len(queried) == INITIAL
    answers = tmp / "answers.csv"
    with answers.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([p, truth[p]] for p in queried)
    assert _call("label", "import", str(human), str(answers)) == 0
    assert (human / "rounds" / "initial" / "answers.json").is_file()
    return World(tmp, labeled, photos, held, tmp / "runs" / "labeled", human,
                 yaml.safe_load(lab_recipe.read_text()), yaml.safe_load(hum_recipe.read_text()), truth,
                 {p: truth[p] for p in queried})


class Env:
    """One test's copies: ``L`` the trained run, ``H`` the answered human run, and on demand another run,
    a run of an ssal without run.json, comparison folders and a folder of the user's files."""

    def __init__(self, world: World, tmp: Path):
        self.world, self.tmp = world, tmp
        self.L = self.copy(world.trained, "L")
        self.H = self.copy(world.human, "H")

    def copy(self, src: Path, name: str) -> Path:
        shutil.copytree(src, self.tmp / name, symlinks=True)
        return self.tmp / name

    def other(self) -> Path:
        return self.copy(self.world.trained, "other")

    def legacy(self) -> Path:
        """A run of an ssal without run.json: recipe.yaml + metrics.jsonl + pool.json."""
        run = self.copy(self.world.trained, "legacy")
        (run / "run.json").unlink()
        return run

    def comparison(self, marked: bool = True) -> Path:
        """A comparison folder (compare.json, cells/, recipes/, logs/; one made before compare.json without
        it) whose one cell is a copy of the trained run."""
        cmp = self.tmp / ("cmp" if marked else "oldcmp")
        for sub in ("recipes", "logs"):
            (cmp / sub).mkdir(parents=True)
        self.copy(self.world.trained, f"{cmp.name}/cells/c0")
        (cmp / "recipes" / "c0.yaml").write_text(yaml.safe_dump(self.world.labeled_recipe))
        (cmp / "logs" / "c0.log").write_text("round 0 done\n")
        if marked:
            (cmp / "compare.json").write_text('{"spec": "spec.yaml", "title": "t"}\n')
        return cmp

    def mine(self) -> Path:
        """A folder of the user's own files."""
        folder = self.tmp / "mine"
        folder.mkdir(exist_ok=True)
        (folder / "notes.txt").write_text("my notes, no copy elsewhere\n")
        return folder

    def roots(self) -> list[Path]:
        return [self.tmp, *self.world.data()]


@pytest.fixture
def env(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray relative write would land in the snapshot
    pristine = set(snapshot(*world.data()))
    yield Env(world, tmp_path)
    # the shared data folders as they were: a write there (a failing test's, on a version with the hole)
    # must not change what the next test sees
    for added in sorted(set(snapshot(*world.data())) - pristine, key=len, reverse=True):
        p = Path(added)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def ssal(capsys, *args: str) -> tuple[int, str, str]:
    """``ssal ARGS`` in this process: (exit status, stdout, stderr); an argparse error is exit 2."""
    capsys.readouterr()
    rc = _call(*map(str, args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def refused(capsys, env: Env, args: list, *fragments: str) -> str:
    """``ssal ARGS`` ends with exit 2, one error line holding every fragment, and nothing changed under the
    test's folder or the data folders."""
    before = snapshot(*env.roots())
    rc, out, err = ssal(capsys, *args)
    assert rc == 2, f"exit {rc}: {out[-500:]} {err[-500:]}"
    line = one_error_line(err, *fragments)
    assert "Traceback" not in err
    after = snapshot(*env.roots())
    assert after == before, diff(before, after)
    return line


def real(p: Path) -> str:
    return os.path.realpath(p)


def in_run(run: Path) -> str:
    return f"inside the run directory '{real(run)}'"


def in_comparison(cmp: Path) -> str:
    return f"inside the comparison folder '{real(cmp)}'"


def in_data(folder: Path) -> str:
    return f"inside the data folder '{real(folder)}'"


# ----------------------------------------------------------------------------- the command routes

def predict(env: Env, out) -> list:
    return ["predict", env.L, "--out", out]


def export(env: Env, out) -> list:
    return ["export", env.L, "--out", out]


def tasks(env: Env, out) -> list:
    return ["label", "export", env.H, "--out", out]


def queries(env: Env, out) -> list:
    return ["label", "export", env.H, "--format", "csv", "--out", out]


ROUTES = {"predict": predict, "export": export, "label-export": tasks, "label-export-csv": queries}

# every file a trained run holds, and new names beside them (the run given is the one written into)
TRAINED_TARGETS = ["pool.json", "metrics.jsonl", "run.json", "recipe.yaml", "curve.csv", "rounds/initial/selected.json",
                   "checkpoints/round_00.pt", ".lock", "predictions.csv", "rounds/new.csv", "rounds/initial/new.pt",
                   "checkpoints/new.pt"]
# the same for a human run that holds answers not yet in its pool
HUMAN_TARGETS = ["rounds/initial/answers.json", "rounds/initial/queries.csv", "rounds/initial/selected.json",
                 "rounds/initial/tasks.json", "run.json", "recipe.yaml", "metrics.jsonl", ".lock", "tasks.json",
                 "rounds/mine.csv"]
STATE_CASES = [(route, t) for route in ("predict", "export") for t in TRAINED_TARGETS] + \
              [(route, t) for route in ("label-export", "label-export-csv") for t in HUMAN_TARGETS]


@pytest.mark.parametrize("route, target", STATE_CASES, ids=[f"{r}-{t}" for r, t in STATE_CASES])
def test_no_out_file_lands_on_or_beside_a_state_file_of_the_run_it_reads(env, capsys, route, target):
    run = env.L if route in ("predict", "export") else env.H
    out = run / target
    refused(capsys, env, ROUTES[route](env, out), f"--out '{out}'", in_run(run))


def _link(link: Path, target: Path | str) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _file_link(env: Env):  # a link outside that points at a state file
    return _link(env.tmp / "out" / "predictions.csv", env.L / "pool.json"), env.L


def _chain(env: Env):  # a link to a link to a state file
    _link(env.tmp / "b.pt", env.L / "metrics.jsonl")
    return _link(env.tmp / "a.pt", env.tmp / "b.pt"), env.L


def _relative_link(env: Env):  # a relative link
    return _link(env.tmp / "out" / "p.csv", Path("..") / "L" / "recipe.yaml"), env.L


def _dangling(env: Env):  # a link to a name the run does not hold yet
    return _link(env.tmp / "model.pt", env.L / "checkpoints" / "round_01.pt"), env.L


def _linked_parent(env: Env):  # a linked parent folder: the file is new, its folder is the run's rounds/
    return _link(env.tmp / "alias", env.H / "rounds" / "initial") / "answers.json", env.H


def _linked_run(env: Env):  # a link to the run folder itself, and a new name in it
    return _link(env.tmp / "runlink", env.H) / "queries_copy.csv", env.H


def _dotted(env: Env):  # no link: a route that climbs back into the run
    return env.mine() / ".." / "L" / "rounds" / ".." / "run.json", env.L


def _linked_parent_of_parent(env: Env):  # the link is two levels up
    return _link(env.tmp / "deep" / "rounds", env.L / "rounds") / "initial" / "mine.pt", env.L


LINKS = [("predict", _file_link), ("export", _chain), ("predict", _relative_link), ("export", _dangling),
         ("label-export", _linked_parent), ("label-export-csv", _linked_run), ("predict", _dotted),
         ("export", _linked_parent_of_parent), ("label-export-csv", _linked_parent), ("label-export", _linked_run)]


@pytest.mark.parametrize("route, shape", LINKS, ids=[f"{r}-{s.__name__.strip('_')}" for r, s in LINKS])
def test_a_link_or_a_dotted_route_that_leads_into_the_run_is_refused_like_the_place_it_reaches(
        env, capsys, route, shape):
    out, run = shape(env)
    refused(capsys, env, ROUTES[route](env, out), f"--out '{out}'", in_run(run))


def _other_run(env: Env):
    other = env.other()
    return other / "pool.json", in_run(other)


def _other_run_new_name(env: Env):
    other = env.other()
    return other / "rounds" / "initial" / "predictions.csv", in_run(other)


def _legacy_run(env: Env):
    legacy = env.legacy()
    return legacy / "metrics.jsonl", in_run(legacy)


def _legacy_run_new_name(env: Env):
    legacy = env.legacy()
    return legacy / "model.pt", in_run(legacy)


def _the_human_run(env: Env):  # a run other than the one given (predict/export read L)
    return env.H / "rounds" / "initial" / "answers.json", in_run(env.H)


def _the_trained_run(env: Env):  # a run other than the one given (label export reads H)
    return env.L / "pool.json", in_run(env.L)


def _a_cell(env: Env):  # the innermost store is the cell's run directory
    cmp = env.comparison()
    return cmp / "cells" / "c0" / "pool.json", in_run(cmp / "cells" / "c0")


def _comparison(env: Env):
    cmp = env.comparison()
    return cmp / "results.csv", in_comparison(cmp)


def _comparison_logs(env: Env):
    cmp = env.comparison()
    return cmp / "logs" / "c0.log", in_comparison(cmp)


def _old_comparison(env: Env):
    cmp = env.comparison(marked=False)
    return cmp / "recipes" / "mine.json", in_comparison(cmp)


ELSEWHERE = [("predict", _other_run), ("export", _other_run_new_name), ("predict", _legacy_run),
             ("export", _legacy_run_new_name), ("predict", _the_human_run), ("export", _the_human_run),
             ("label-export", _the_trained_run), ("label-export-csv", _legacy_run), ("label-export", _a_cell),
             ("predict", _comparison), ("export", _comparison_logs), ("label-export-csv", _old_comparison),
             ("label-export", _comparison)]


@pytest.mark.parametrize("route, place", ELSEWHERE, ids=[f"{r}-{p.__name__.strip('_')}" for r, p in ELSEWHERE])
def test_an_out_file_inside_another_run_or_a_comparison_folder_is_refused(env, capsys, route, place):
    out, where = place(env)
    refused(capsys, env, ROUTES[route](env, out), f"--out '{out}'", where)


def _train_class(env: Env):
    return env.world.labeled / "train" / "red" / "predictions.csv", env.world.labeled


def _test_split(env: Env):
    return env.world.labeled / "test" / "model.pt", env.world.labeled


def _labeled_top(env: Env):
    return env.world.labeled / "predictions.csv", env.world.labeled


def _link_to_train(env: Env):
    return _link(env.tmp / "imgs", env.world.labeled / "train") / "blue" / "model.pt", env.world.labeled


def _photos(env: Env):
    return env.world.photos / "tasks.json", env.world.photos


def _held_class(env: Env):
    return env.world.held / "green" / "queries.csv", env.world.held


def _link_to_held(env: Env):
    return _link(env.tmp / "exports", env.world.held) / "tasks.json", env.world.held


DATA = [("predict", _train_class), ("export", _test_split), ("predict", _labeled_top), ("export", _link_to_train),
        ("label-export", _photos), ("label-export-csv", _photos), ("label-export-csv", _held_class),
        ("label-export", _link_to_held)]


@pytest.mark.parametrize("route, place", DATA, ids=[f"{r}-{p.__name__.strip('_')}" for r, p in DATA])
def test_an_out_file_inside_a_data_folder_of_the_run_is_refused(env, capsys, route, place):
    out, folder = place(env)
    refused(capsys, env, ROUTES[route](env, out), f"--out '{out}'", in_data(folder))


def test_predict_out_inside_the_images_folder_it_reads_is_refused(env, capsys):
    """--images is a data folder of that command: its CSV there would be read as an image folder's file."""
    images = env.tmp / "new_images"
    shutil.copytree(env.world.labeled / "test", images)
    for out in (images / "predictions.csv", images / "red" / "p.csv"):
        refused(capsys, env, ["predict", env.L, "--images", images, "--out", out], f"--out '{out}'",
                in_data(images))


# ----------------------------------------------------------------------------- files of the user's, files of ssal's

def _csv(path: Path, header: list[str], rows: list[list], lineterminator: str = "\r\n") -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator=lineterminator)
        w.writerow(header)
        w.writerows(rows)
    return path


def _user_csv(env: Env) -> Path:  # a CSV of the user's
    return _csv(env.tmp / "labels.csv", ["path", "label"], [["a.png", "red"], ["b.png", "blue"]])


def _pandas_like(env: Env) -> Path:  # the predictions' header, written by another CSV writer (LF, an index column)
    return _csv(env.tmp / "preds.csv", ["", *PREDICTION_HEADER], [[0, "a.png", 0, "red", "0.9", ""]], "\n")


def _curve_csv(env: Env) -> Path:  # a CSV ssal wrote, for another purpose (the run's curve)
    dest = env.tmp / "curve.csv"
    dest.write_bytes((env.L / "curve.csv").read_bytes())
    return dest


def _user_model(env: Env) -> Path:  # a torch file of the user's
    path = env.tmp / "model.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "note": "my fine-tuned model"}, path)
    return path


def _predictions_as_model(env: Env) -> Path:  # a file ssal writes for predict, given to export
    return _csv(env.tmp / "model.pt", PREDICTION_HEADER, [["a.png", 0, "red", "0.9000", ""]])


def _user_tasks(env: Env) -> Path:  # Label Studio tasks of the user's (no ssal_run)
    path = env.tmp / "tasks.json"
    path.write_text(json.dumps([{"data": {"image": "/data/local-files/?d=a.png"}}]))
    return path


def _user_config_beside(env: Env) -> Path:  # the tasks name is free, but its .xml is the user's own config
    (env.tmp / "tasks.xml").write_text('<View>\n  <Text name="t" value="$text"/>\n</View>\n')
    return env.tmp / "tasks.json"


def _predictions_as_queries(env: Env) -> Path:
    return _csv(env.tmp / "queries.csv", PREDICTION_HEADER, [["a.png", 0, "red", "0.9000", ""]])


THEIRS = [("predict", _user_csv), ("predict", _pandas_like), ("predict", _curve_csv), ("export", _user_model),
          ("export", _predictions_as_model), ("label-export", _user_tasks), ("label-export", _user_config_beside),
          ("label-export-csv", _user_csv), ("label-export-csv", _predictions_as_queries)]


def _is_route_output(route: str, env: Env, out: Path) -> None:
    """``out`` holds what ``route`` writes, checked against the README and the run, not against ssal's
    recognisers."""
    if route == "predict":
        rows = read_csv(out)
        assert list(rows[0]) == PREDICTION_HEADER and len(rows) == N_TRAIN
        assert {r["prediction"] for r in rows} <= set(CLASSES)
    elif route == "export":
        ck = torch.load(out, weights_only=True)
        assert ck["classes"] == sorted(CLASSES) and ck["num_classes"] == 3 and "state_dict" in ck
    else:
        queried = [r["path"] for r in read_csv(env.H / "rounds" / "initial" / "queries.csv")]
        if route == "label-export-csv":
            assert [r["path"] for r in read_csv(out)] == queried
        else:
            assert [t["data"]["path"] for t in json.loads(out.read_text())] == queried
            config = out.with_suffix(".xml").read_text()
            assert all(f'<Choice value="{c}"/>' in config for c in CLASSES)


@pytest.mark.parametrize("route, theirs", THEIRS, ids=[f"{r}-{t.__name__.strip('_')}" for r, t in THEIRS])
def test_an_existing_out_file_ssal_did_not_write_needs_force_and_its_own_output_is_replaced_without(
        env, capsys, route, theirs):
    out = theirs(env)
    culprit = out if out.exists() else out.with_suffix(".xml")
    refused(capsys, env, ROUTES[route](env, out), f"'{culprit}'", "exists", "--force")
    run = env.L if route in ("predict", "export") else env.H
    before = snapshot(run)
    rc, _, err = ssal(capsys, *ROUTES[route](env, out), "--force")
    assert rc == 0, err
    _is_route_output(route, env, out)
    assert snapshot(run) == before, "the run changed"
    os.utime(out, (1, 1))  # its own file again, written anew (not left as it was)
    rc, _, err = ssal(capsys, *ROUTES[route](env, out))
    assert rc == 0, err
    _is_route_output(route, env, out)
    assert out.stat().st_mtime > 1


def test_label_export_out_naming_the_xml_config_is_refused_and_the_default_writes_into_the_run(env, capsys):
    """The config goes beside the tasks with .xml: an --out ending in .xml would be overwritten by it.
    Without --out the run's own batch folder is the place (under its lock)."""
    out = env.tmp / "labeling.xml"
    refused(capsys, env, tasks(env, out), f"--out '{out}'", ".json")
    rc, _, err = ssal(capsys, "label", "export", env.H)
    assert rc == 0, err
    _is_route_output("label-export", env, env.H / "rounds" / "initial" / "tasks.json")
    assert not (env.H / ".lock").exists()


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_out_that_is_a_folder_or_lies_in_a_missing_folder_is_refused_for_that_not_as_a_disk_error(
        env, capsys, route):
    folder = env.mine()
    line = refused(capsys, env, ROUTES[route](env, folder), f"--out '{folder}'", "folder")
    assert "disk" not in line, line
    missing = env.tmp / "no_such_folder" / "out.file"
    line = refused(capsys, env, ROUTES[route](env, missing), f"--out '{missing}'",
                   f"'{missing.parent}' does not exist")
    assert "disk" not in line, line


# ----------------------------------------------------------------------------- the run keeps its labels

def test_after_refused_exports_onto_its_answers_the_human_run_resumes_with_exactly_those_answers(env, capsys):
    answers = env.H / "rounds" / "initial" / "answers.json"
    refused(capsys, env, tasks(env, answers), in_run(env.H))
    refused(capsys, env, queries(env, answers), in_run(env.H))
    refused(capsys, env, predict(env, env.H / "pool.json"), in_run(env.H))
    rc, out, err = ssal(capsys, "run", "--resume", env.H)
    assert rc == 0, err
    assert "round 0: 12 labels" in out, out
    pool = json.loads((env.H / "pool.json").read_text())
    names = sorted(env.world.truth)  # the pool: the folder's files, sorted
    got = {names[i]: CLASSES[label] for i, label, _ in pool["labeled"]}
    assert got == env.world.answered


def test_after_refused_writes_onto_its_pool_and_metrics_the_trained_run_resumes_and_keeps_its_labels(env, capsys):
    before = json.loads((env.L / "pool.json").read_text())["labeled"]
    for args in (predict(env, env.L / "pool.json"), export(env, env.L / "metrics.jsonl"),
                 ["report", env.L, "--out", env.L]):
        refused(capsys, env, args, in_run(env.L))
    rc, out, err = ssal(capsys, "run", "--resume", env.L, "active.rounds=1")
    assert rc == 0, err
    assert "repair" not in out and "rebuilt" not in out, out
    after = json.loads((env.L / "pool.json").read_text())["labeled"]
    assert after[:INITIAL] == before and len(after) == INITIAL + 6


# ----------------------------------------------------------------------------- ssal report --out

def _report_into_run(env: Env):
    return ["report", env.L, "--out", env.L], in_run(env.L)


def _report_into_rounds_of_another(env: Env):
    other = env.other()
    return ["report", env.L, "--out", other / "rounds" / "report"], in_run(other)


def _report_into_legacy(env: Env):
    legacy = env.legacy()
    return ["report", env.L, "--out", legacy], in_run(legacy)


def _report_into_human_run(env: Env):
    return ["report", env.L, "--out", env.H / "rounds"], in_run(env.H)


def _report_into_comparison(env: Env):  # a comparison folder that is not the one reported alone
    cmp = env.comparison()
    return ["report", env.L, "--out", cmp], in_comparison(cmp)


def _report_of_comparison_into_another(env: Env):
    cmp, old = env.comparison(), env.comparison(marked=False)
    return ["report", cmp, "--out", old / "report"], in_comparison(old)


def _report_into_train_class(env: Env):
    return ["report", env.L, "--out", env.world.labeled / "train" / "red"], in_data(env.world.labeled)


def _report_into_new_folder_of_data(env: Env):
    return ["report", env.L, "--out", env.world.labeled / "reports"], in_data(env.world.labeled)


def _report_through_link(env: Env):
    return ["report", env.L, "--out", _link(env.tmp / "plots", env.world.labeled / "test")], \
        in_data(env.world.labeled)


REPORTS = [_report_into_run, _report_into_rounds_of_another, _report_into_legacy, _report_into_human_run,
           _report_into_comparison, _report_of_comparison_into_another, _report_into_train_class,
           _report_into_new_folder_of_data, _report_through_link]


@pytest.mark.parametrize("case", REPORTS, ids=[c.__name__.removeprefix("_report_") for c in REPORTS])
def test_report_out_into_a_run_a_comparison_or_a_data_folder_is_refused(env, capsys, case):
    args, where = case(env)
    refused(capsys, env, args, f"--out '{args[-1]}'", where)


def test_report_out_into_a_folder_of_user_files_needs_force_and_keeps_them(env, capsys):
    mine = env.mine()
    (mine / "summary.txt").write_text("mine too\n")
    refused(capsys, env, ["report", env.L, "--out", mine], f"--out '{mine}'", "notes.txt", "--force")
    rc, _, err = ssal(capsys, "report", env.L, "--out", mine, "--force")
    assert rc == 0, err
    assert sorted(p.name for p in mine.iterdir()) == sorted(
        ["notes.txt", "summary.txt", "results.csv", "summary.md", "curves.png", "aubc.png"])
    assert (mine / "notes.txt").read_text() == "my notes, no copy elsewhere\n"
    fresh = env.tmp / "fresh"
    rc, _, err = ssal(capsys, "report", env.L, "--out", fresh)
    assert rc == 0, err
    assert len(read_csv(fresh / "results.csv")) == 1  # one run, one round
    rc, _, err = ssal(capsys, "report", env.L, "--out", fresh)  # only its own files there: rewritten
    assert rc == 0, err


def test_a_comparison_reported_alone_is_written_into_but_no_run_of_it_or_other_report_is(env, capsys):
    cmp = env.comparison()
    refused(capsys, env, ["report", env.L, "--out", cmp], in_comparison(cmp))
    refused(capsys, env, ["report", cmp, "--out", cmp / "cells" / "c0"], in_run(cmp / "cells" / "c0"))
    rc, _, err = ssal(capsys, "report", cmp)
    assert rc == 0, err
    assert len(read_csv(cmp / "results.csv")) == 1


# ----------------------------------------------------------------------------- ssal compare --out, ssal run

def _spec(env: Env) -> Path:
    base = env.tmp / "base.yaml"
    base.write_text(yaml.safe_dump({k: v for k, v in env.world.labeled_recipe.items() if k != "output_dir"}))
    spec = env.tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({"recipe": str(base), "output_dir": str(env.tmp / "cmp_default")}))
    return spec


def _compare_into_user_files(env: Env):
    mine = env.mine()
    return mine, "notes.txt"


def _compare_into_run(env: Env):
    return env.L / "comparison", in_run(env.L)


def _compare_into_legacy_cells(env: Env):
    legacy = env.legacy()
    return legacy / "cells", in_run(legacy)


def _compare_into_another_comparison(env: Env):
    old = env.comparison(marked=False)
    return old / "cells" / "mine", in_comparison(old)


def _compare_into_data(env: Env):
    return env.world.labeled / "train" / "comparison", in_data(env.world.labeled)


COMPARES = [_compare_into_user_files, _compare_into_run, _compare_into_legacy_cells, _compare_into_another_comparison,
            _compare_into_data]


@pytest.mark.parametrize("case", COMPARES, ids=[c.__name__.removeprefix("_compare_") for c in COMPARES])
def test_compare_out_into_user_files_a_run_a_comparison_or_a_data_folder_is_refused(env, capsys, case):
    spec = _spec(env)
    out, where = case(env)
    refused(capsys, env, ["compare", spec, "--out", out, "--no-progress"], f"'{out}'", where)


def _recipe(env: Env, base: dict, **keys) -> Path:
    path = env.tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({**base, **{k: str(v) for k, v in keys.items()}}))
    return path


RUN_PLACES = [
    ("output_dir-in-a-run", lambda e: {"output_dir": e.L / "sub"}, lambda e: ("output_dir", in_run(e.L))),
    ("output_dir-in-rounds-of-another", lambda e: {"output_dir": e.H / "rounds" / "new"},
     lambda e: ("output_dir", in_run(e.H))),
    ("output_dir-in-a-legacy-run", lambda e: {"output_dir": e.legacy() / "checkpoints" / "x"},
     lambda e: ("output_dir", in_run(e.tmp / "legacy"))),
    ("output_dir-in-comparison-logs", lambda e: {"output_dir": e.comparison() / "logs" / "x"},
     lambda e: ("output_dir", in_comparison(e.tmp / "cmp"))),
    ("output_dir-in-old-comparison-recipes", lambda e: {"output_dir": e.comparison(False) / "recipes" / "x"},
     lambda e: ("output_dir", in_comparison(e.tmp / "oldcmp"))),
    ("output_dir-in-data-root", lambda e: {"output_dir": e.world.labeled / "runs"},
     lambda e: ("output_dir", in_data(e.world.labeled))),
    ("output_dir-in-train-class", lambda e: {"output_dir": e.world.labeled / "train" / "red" / "run"},
     lambda e: ("output_dir", in_data(e.world.labeled))),
    ("output_dir-through-a-link-to-data", lambda e: {"output_dir": _link(e.tmp / "out", e.world.labeled) / "run"},
     lambda e: ("output_dir", in_data(e.world.labeled))),
    ("cache_dir-in-data-root", lambda e: {"cache_dir": e.world.labeled / "cache"},
     lambda e: ("cache_dir", in_data(e.world.labeled))),
    ("cache_dir-in-a-run", lambda e: {"cache_dir": e.L / "cache"}, lambda e: ("cache_dir", in_run(e.L))),
    ("cache_dir-in-a-comparison", lambda e: {"cache_dir": e.comparison() / "cache"},
     lambda e: ("cache_dir", in_comparison(e.tmp / "cmp"))),
]
HUMAN_PLACES = [
    ("output_dir-in-test-root", lambda e: {"output_dir": e.world.held / "run"},
     lambda e: ("output_dir", in_data(e.world.held))),
    ("cache_dir-in-test-root", lambda e: {"cache_dir": e.world.held / "red" / "cache"},
     lambda e: ("cache_dir", in_data(e.world.held))),
    ("output_dir-in-photos", lambda e: {"output_dir": e.world.photos / "run"},
     lambda e: ("output_dir", in_data(e.world.photos))),
]
PLACES = [(*c, "labeled") for c in RUN_PLACES] + [(*c, "human") for c in HUMAN_PLACES]


@pytest.mark.parametrize("name, keys, expected, recipe", PLACES, ids=[c[0] for c in PLACES])
def test_a_runs_output_dir_or_cache_dir_inside_a_run_a_comparison_or_a_data_folder_is_refused(
        env, capsys, name, keys, expected, recipe):
    base = dict(env.world.labeled_recipe if recipe == "labeled" else env.world.human_recipe)
    base["output_dir"] = str(env.tmp / "runs" / "new")
    values = keys(env)
    key, where = expected(env)
    refused(capsys, env, ["run", _recipe(env, base, **values)], f"{key} '{values[key]}'", where)


def test_a_run_may_be_a_cell_of_a_comparison_but_go_nowhere_else_in_it(env, capsys):
    cmp = env.comparison()
    base = dict(env.world.labeled_recipe)
    out = cmp / "recipes" / "new"
    refused(capsys, env, ["run", _recipe(env, base, output_dir=out)], f"output_dir '{out}'", in_comparison(cmp))
    rc, _, err = ssal(capsys, "run", _recipe(env, base, output_dir=cmp / "cells" / "new"))
    assert rc == 0, err
    assert (cmp / "cells" / "new" / "metrics.jsonl").is_file()


# ----------------------------------------------------------------------------- ssal init DIR, ssal pretrain

def _init_over_run(env: Env):  # the run's own recipe.yaml would be rewritten
    return env.L, ["--force"], in_run(env.L)


def _init_in_rounds(env: Env):
    return env.H / "rounds" / "project", [], in_run(env.H)


def _init_through_link(env: Env):
    return _link(env.tmp / "project", env.other()), ["--force"], in_run(env.tmp / "other")


def _init_in_comparison(env: Env):
    cmp = env.comparison(marked=False)
    return cmp / "logs" / "project", [], in_comparison(cmp)


def _init_in_images(env: Env):
    return env.world.photos / "project", [], in_data(env.world.photos)


def _init_in_test_folder(env: Env):
    return env.world.held / "red" / "project", ["--test", env.world.held], in_data(env.world.held)


INITS = [_init_over_run, _init_in_rounds, _init_through_link, _init_in_comparison, _init_in_images,
         _init_in_test_folder]


@pytest.mark.parametrize("case", INITS, ids=[c.__name__.removeprefix("_init_") for c in INITS])
def test_init_dir_inside_a_run_a_comparison_or_a_data_folder_is_refused(env, capsys, case):
    folder, extra, where = case(env)
    refused(capsys, env, ["init", folder, "--images", env.world.photos, "--classes", ",".join(CLASSES), *extra],
            f"DIR '{folder}'", where)


@pytest.mark.parametrize("where", ["data-root", "run"])
def test_pretrain_fills_no_cache_dir_inside_a_data_folder_or_a_run(env, capsys, where):
    """``ssal run`` refuses these cache_dir (above); ``ssal pretrain`` fills the same cache, so the same
    places must be refused (it writes the image check, the normalisation and the encoder there)."""
    cache = env.world.labeled / "cache" if where == "data-root" else env.L / "cache"
    recipe = _recipe(env, dict(env.world.labeled_recipe), output_dir=env.tmp / "runs" / "new")
    refused(capsys, env, ["pretrain", recipe, f"cache_dir={cache}", "pretrain.method=simclr", "pretrain.epochs=1",
                          "pretrain.batch_size=8", "--no-progress"],
            f"cache_dir '{cache}'", in_data(env.world.labeled) if where == "data-root" else in_run(env.L))
