"""People label the queries: a folder of unlabeled images, ``active.oracle: human``, answers that come
back as a filled-in queries.csv or a Label Studio export, and the model that leaves the run.

The annotator is scripted: the test generates the images (colour classes with noise) and keeps their
hidden truth, which ssal never sees except through the answers."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_folder_recipe_dict
from PIL import Image

from ssal.cli import main
from ssal.data.label_files import QUERY_COLUMNS
from ssal.run.readers import read_metrics

CLASSES = ["red", "green", "blue"]
N_IMAGES = 300
INITIAL, BUDGET = 12, 9


# ----------------------------------------------------------------------------- data and helpers

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The in-process commands train on one thread, like the subprocesses (two threads on a busy 2-core
    machine spin far more than they compute)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def colour_image(rng: np.random.Generator, c: int) -> np.ndarray:
    """16x16 RGB noise whose channel ``c`` is bright: the class is the dominant colour."""
    img = rng.integers(0, 80, size=(16, 16, 3), dtype=np.uint8)
    img[..., c] = rng.integers(150, 256, size=(16, 16), dtype=np.uint8)
    return img


@pytest.fixture(scope="session")
def colour_pool(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(folder, hidden truth {path relative to the folder: class}): 300 PNGs, flat and in nested folders
    whose names mean nothing, plus files that are not pool images (a text file, hidden files)."""
    root = tmp_path_factory.mktemp("colours") / "photos"
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(N_IMAGES):
        c = int(rng.integers(0, 3))
        rel = Path(["", "2023", "2023/trip", "misc/b"][i % 4]) / f"img_{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour_image(rng, c)).save(root / rel)
        truth[rel.as_posix()] = CLASSES[c]
    (root / "notes.txt").write_text("not an image\n")
    Image.fromarray(colour_image(rng, 0)).save(root / "2023" / ".hidden.png")
    (root / ".thumbs").mkdir()
    Image.fromarray(colour_image(rng, 1)).save(root / ".thumbs" / "img_000.png")
    return root, truth


@pytest.fixture(scope="session")
def labeled_colours(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The same kind of images in the labeled layout train/<class>/, test/<class>/ (for a simulated
    oracle); truth: {path relative to the root (train/<class>/...): class}."""
    root = tmp_path_factory.mktemp("labeled_colours")
    rng = np.random.default_rng(1)
    truth = {}
    for split, n in (("train", 90), ("test", 30)):
        for i in range(n):
            c = i % 3
            path = root / split / CLASSES[c] / f"img_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(colour_image(rng, c)).save(path)
            if split == "train":
                truth[f"train/{CLASSES[c]}/img_{i:03d}.png"] = CLASSES[c]
    return root, truth


def folder_recipe(tmp: Path, root: Path, name: str = "human", **sections) -> Path:
    """A recipe for labeling ``root``: test_resnet (a timm model) at 16 px, a few steps, entropy."""
    defaults = {"model": {"backbone": "test_resnet"}, "train": {"steps": 8},
                "active": {"initial": INITIAL, "budget": BUDGET, "rounds": 3}}
    for section, values in sections.items():
        defaults[section] = {**defaults.get(section, {}), **values}
    recipe = tiny_folder_recipe_dict(tmp / "runs" / name, tmp / "cache", root, CLASSES, **defaults)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


def ssal(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ssal ARGS`` in a subprocess (with --no-progress where the command takes it)."""
    extra = ["--no-progress"] if args[0] in ("run", "predict") else []
    return subprocess.run([sys.executable, "-m", "ssal", *args, *extra], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def ssal_here(capsys, *args: str) -> tuple[int, str, str]:
    """``ssal ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    extra = ["--no-progress"] if args[0] in ("run", "predict") else []
    rc = main([*args, *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssal: error: "), err
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def open_folder(run: Path) -> Path:
    """The rounds/ folder of the batch that awaits labels (its queries written, not yet in the pool)."""
    rows = read_metrics(run)
    return run / "rounds" / ("initial" if not rows else f"r{rows[-1]['round']:02d}")


def fill_queries(folder: Path, truth: dict[str, str], out: Path, keep=lambda k: True) -> Path:
    """A scripted annotator: ``folder``/queries.csv with the label column filled in from the truth (only
    the rows ``keep(k)`` says, by row number; the others stay empty)."""
    rows = read_csv(folder / "queries.csv")
    for k, row in enumerate(rows):
        if keep(k):
            row["label"] = truth[row["path"]]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(QUERY_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return out


def pool_json(run: Path) -> dict:
    return json.loads((run / "pool.json").read_text())


def selections(run: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((run / "rounds").glob("*/selected.json"))}


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): ("dir",) if p.is_dir() else (hashlib.sha256(p.read_bytes()).hexdigest(),)
            for p in sorted(root.rglob("*")) if p.name not in (".lock", ".answers.lock")}


def assert_pool_matches_truth(run: Path, truth: dict[str, str], order: list[str]) -> dict:
    """pool.json carries the path of every entry, each the pool's index-th image, labeled as the truth."""
    pool = pool_json(run)
    assert pool["n"] == len(order)
    assert "paths" in pool and len(pool["paths"]) == len(pool["labeled"])
    for (i, y, _), path in zip(pool["labeled"], pool["paths"], strict=True):
        assert order[i] == path
        if y >= 0:
            assert CLASSES[y] == truth[path], path
    return pool


def assert_selections_carry_paths(run: Path, order: list[str]) -> None:
    for name, sel in selections(run).items():
        assert "paths" in sel, name
        assert sel["paths"] == [order[i] for i in sel["indices"]], name


# ----------------------------------------------------------------------------- exported model, timm alone

LOADER = r'''
import csv, json, sys
import numpy as np
import timm
import torch
from PIL import Image

ck = torch.load(sys.argv[1], weights_only=True)
model = timm.create_model(ck["arch"], num_classes=ck["num_classes"], in_chans=ck["in_chans"], **ck.get("kwargs", {}))
model.load_state_dict(ck["state_dict"])
model.eval()
size = ck["image_size"]
mean = np.array(ck["mean"], dtype=np.float32).reshape(-1, 1, 1)
std = np.array(ck["std"], dtype=np.float32).reshape(-1, 1, 1)
out = {}
for path in json.loads(sys.argv[3]):
    with Image.open(sys.argv[2] + "/" + path) as im:
        im = im.convert("RGB" if ck["in_chans"] == 3 else "L")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im, dtype=np.float32).reshape(size, size, -1).transpose(2, 0, 1)
    x = torch.from_numpy(((a / 255 - mean) / std)[None])
    with torch.no_grad():
        p = model(x).softmax(1)[0]
    out[path] = [ck["classes"][int(p.argmax())], float(p.max())]
assert "ssal" not in sys.modules and not any(m.startswith("ssal.") for m in sys.modules), "ssal was imported"
print(json.dumps(out))
'''


def predict_with_timm_alone(model: Path, root: Path, paths: list[str], tmp: Path) -> dict[str, list]:
    script = tmp / "load_exported.py"
    script.write_text(LOADER)
    proc = subprocess.run([sys.executable, str(script), str(model), str(root), json.dumps(paths)], env=_env(),
                          capture_output=True, text=True, timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 1. three rounds, CSV answers

@pytest.mark.slow
def test_three_human_rounds_with_csv_answers_match_the_hidden_truth(colour_pool, tmp_path, capsys):
    root, truth = colour_pool
    order = sorted(truth)  # the pool's indices: its images sorted by relative path
    recipe = folder_recipe(tmp_path, root)
    run = tmp_path / "runs" / "human"

    first = ssal("run", str(recipe))
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{INITIAL} images await labels" in first.stdout, first.stdout
    initial = run / "rounds" / "initial"
    for name in ("selected.json", "queries.csv", "queries.png"):
        assert (initial / name).is_file(), name
    with Image.open(initial / "queries.png") as im:
        assert im.format == "PNG"
    assert read_metrics(run) == []  # nothing trained before people answer
    assert not (run / "pool.json").exists() or pool_json(run)["labeled"] == []
    with (initial / "queries.csv").open(newline="") as f:
        assert next(csv.reader(f)) == list(QUERY_COLUMNS)
    queries = read_csv(initial / "queries.csv")
    assert [int(q["query"]) for q in queries] == list(range(1, INITIAL + 1))
    assert [int(q["index"]) for q in queries] == selections(run)["initial"]["indices"]
    assert all(order[int(q["index"])] == q["path"] for q in queries)
    assert all(q["label"] == "" for q in queries)
    assert len({q["run"] for q in queries}) == 1 and queries[0]["run"]

    for r in range(4):  # the initial batch, then the batches of acquisitions 0, 1, 2
        folder = open_folder(run)
        answers = fill_queries(folder, truth, tmp_path / f"answers_{r}.csv")
        rc, out, err = ssal_here(capsys, "label", "import", str(run), str(answers))
        assert rc == 0, err
        assert "all" in out and "answered" in out, out
        resumed = ssal("run", "--resume", str(run))  # a new process, as after a day of labeling
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        rows = read_metrics(run)
        assert len(rows) == r + 1
        assert rows[-1]["n_labeled"] == INITIAL + r * BUDGET
        if r < 3:
            assert f"{BUDGET} images await labels" in resumed.stdout, resumed.stdout
            nxt = run / "rounds" / f"r{r:02d}"
            assert len(read_csv(nxt / "queries.csv")) == BUDGET
            assert all(q["suggestion"] in CLASSES and 0 <= float(q["confidence"]) <= 1
                       for q in read_csv(nxt / "queries.csv"))

    assert len(read_metrics(run)) == 4  # active.rounds + 1
    pool = assert_pool_matches_truth(run, truth, order)
    assert len(pool["labeled"]) == INITIAL + 3 * BUDGET and all(y >= 0 for _, y, _ in pool["labeled"])
    assert_selections_carry_paths(run, order)
    assert sorted(selections(run)) == ["initial", "r00", "r01", "r02"]
    rc, out, err = ssal_here(capsys, "run", "--resume", str(run))
    assert rc == 0 and "complete" in out, err

    rc, out, err = ssal_here(capsys, "predict", str(run), "--out", str(tmp_path / "predictions.csv"))
    assert rc == 0, err
    rows = read_csv(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["path", "index", "prediction", "confidence", "label"]
    assert [r["path"] for r in rows] == order  # one row per image, hidden and non-image files left out
    assert [int(r["index"]) for r in rows] == list(range(N_IMAGES))
    labeled = {pool["paths"][k]: CLASSES[y] for k, (_, y, _) in enumerate(pool["labeled"])}
    assert {r["path"]: r["label"] for r in rows if r["label"]} == labeled
    assert all(r["prediction"] in CLASSES and 0 < float(r["confidence"]) <= 1 for r in rows)
    accuracy = np.mean([r["prediction"] == truth[r["path"]] for r in rows])
    assert accuracy > 0.5, accuracy  # three colours: chance is 1/3

    rc, out, err = ssal_here(capsys, "export", str(run), "--out", str(tmp_path / "model.pt"))
    assert rc == 0, err
    alone = predict_with_timm_alone(tmp_path / "model.pt", root, order, tmp_path)
    assert {p: alone[p][0] for p in order} == {r["path"]: r["prediction"] for r in rows}
    assert max(abs(alone[r["path"]][1] - float(r["confidence"])) for r in rows) < 2e-3


# Label Studio answers: tests/test_label_studio_server.py (a real server) and test_label_studio_files.py


# ----------------------------------------------------------------------------- 3. who answers changes nothing

@pytest.mark.slow
def test_a_simulated_and_a_human_oracle_fed_the_truth_make_identical_selections(labeled_colours, tmp_path, capsys):
    root, truth = labeled_colours
    common = {"data": {"classes": None, "root": str(root)}, "model": {"backbone": "cnn_small"},
              "train": {"reinit": False}, "active": {"rounds": 2, "strategy": "entropy"}}
    sim_recipe = folder_recipe(tmp_path, root, "sim", **{**common, "active": {**common["active"],
                                                                               "oracle": "simulated"}})
    human_recipe = folder_recipe(tmp_path, root, "human", **common)
    sim_run, human_run = tmp_path / "runs" / "sim", tmp_path / "runs" / "human"

    rc, out, err = ssal_here(capsys, "run", str(sim_recipe))
    assert rc == 0, err
    rc, out, err = ssal_here(capsys, "run", str(human_recipe))
    assert rc == 0, err
    for r in range(3):
        answers = fill_queries(open_folder(human_run), truth, tmp_path / f"answers_{r}.csv")
        rc, out, err = ssal_here(capsys, "label", "import", str(human_run), str(answers))
        assert rc == 0, err
        rc, out, err = ssal_here(capsys, "run", "--resume", str(human_run))
        assert rc == 0, err

    assert len(read_metrics(sim_run)) == len(read_metrics(human_run)) == 3
    sim_sel, human_sel = selections(sim_run), selections(human_run)
    assert sorted(sim_sel) == sorted(human_sel) == ["initial", "r00", "r01"]
    for name in sim_sel:
        assert sim_sel[name]["indices"] == human_sel[name]["indices"], name
    assert pool_json(sim_run)["labeled"] == pool_json(human_run)["labeled"]
    assert [m["test_acc"] for m in read_metrics(sim_run)] == [m["test_acc"] for m in read_metrics(human_run)]


# ----------------------------------------------------------------------------- 4. partial answers (fast)

def test_a_partial_import_is_kept_and_the_run_waits_for_the_rest_without_training(colour_pool, tmp_path, capsys):
    root, truth = colour_pool
    order = sorted(truth)
    recipe = folder_recipe(tmp_path, root, model={"backbone": "cnn_small"}, train={"steps": 5},
                           active={"rounds": 1, "budget": 8})
    run = tmp_path / "runs" / "human"
    rc, out, err = ssal_here(capsys, "run", str(recipe))
    assert rc == 0, err
    rc, out, err = ssal_here(capsys, "label", "import", str(run),
                             str(fill_queries(run / "rounds" / "initial", truth, tmp_path / "a0.csv")))
    assert rc == 0, err
    rc, out, err = ssal_here(capsys, "run", "--resume", str(run))
    assert rc == 0, err
    assert len(read_metrics(run)) == 1 and "8 images await labels" in out, out

    folder = run / "rounds" / "r00"
    queries = read_csv(folder / "queries.csv")
    half = tmp_path / "half.csv"
    fill_queries(folder, truth, half, keep=lambda k: k < 4)
    rc, out, err = ssal_here(capsys, "label", "import", str(run), str(half))
    assert rc == 0, err
    assert "imported 4 answers" in out and "4 rows had no label" in out and "4 of 8 images still await" in out, out
    stored = json.loads((folder / "answers.json").read_text())
    assert sorted(i for i, _ in stored["answers"]) == sorted(int(q["index"]) for q in queries[:4])
    assert all(CLASSES[y] == truth[order[i]] for i, y in stored["answers"])

    before = snapshot(run)
    rc, out, err = ssal_here(capsys, "run", "--resume", str(run))
    assert rc == 0, err
    assert "4 of the 8 images of r00 still await labels" in out, out
    assert "round 1" not in out
    assert snapshot(run) == before  # nothing trained, nothing written

    # the rest, as a hand-made CSV of absolute paths and labels only
    rest = tmp_path / "rest.csv"
    with rest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for q in queries[4:]:
            w.writerow([str(root / q["path"]), truth[q["path"]]])
    rc, out, err = ssal_here(capsys, "label", "import", str(run), str(rest))
    assert rc == 0, err
    assert "all 8 answered" in out, out
    rc, out, err = ssal_here(capsys, "run", "--resume", str(run))
    assert rc == 0, err
    rows = read_metrics(run)
    assert [m["n_labeled"] for m in rows] == [INITIAL, INITIAL + 8]
    pool = assert_pool_matches_truth(run, truth, order)
    assert {i for i, _, r in pool["labeled"] if r == 1} == {int(q["index"]) for q in queries}


# ----------------------------------------------------------------------------- 5. a pool without labels (fast)

def test_a_pool_without_labels_and_a_simulated_oracle_is_one_error_line_that_suggests_human(
        colour_pool, tmp_path, capsys):
    root, _ = colour_pool
    recipe = folder_recipe(tmp_path, root, active={"oracle": "simulated"})
    rc, out, err = ssal_here(capsys, "run", str(recipe))
    assert rc == 2
    one_error_line(err, "active.oracle=human")
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "human").exists()


@pytest.fixture(scope="module")
def no_test_run(colour_pool, tmp_path_factory):
    """A finished human run (rounds 0 and 1) on the unlabeled folder, without a test set, answered
    with the truth; and its predictions.csv."""
    root, truth = colour_pool
    tmp = tmp_path_factory.mktemp("no_test")
    recipe = folder_recipe(tmp, root, model={"backbone": "cnn_small"}, train={"steps": 5}, active={"rounds": 1})
    run = tmp / "runs" / "human"

    def call(*args: str) -> int:
        extra = ["--no-progress"] if args[0] in ("run", "predict") else []
        return main([*args, *extra])

    assert call("run", str(recipe)) == 0
    for k in range(2):
        assert call("label", "import", str(run), str(fill_queries(open_folder(run), truth, tmp / f"a{k}.csv"))) == 0
        assert call("run", "--resume", str(run)) == 0
    assert len(read_metrics(run)) == 2
    assert call("predict", str(run), "--out", str(tmp / "predictions.csv")) == 0
    return run, tmp / "predictions.csv"


def test_rounds_without_a_test_set_report_the_models_confidence_and_classes_on_the_pool(no_test_run):
    run, predictions = no_test_run
    rows = read_metrics(run)
    for m in rows:
        assert "test_acc" not in m
        assert 0 <= m["pool_mean_conf"] <= 1
        assert list(m["pool_class_dist"]) == CLASSES
        assert all(0 <= v <= 1 for v in m["pool_class_dist"].values())
        assert sum(m["pool_class_dist"].values()) == pytest.approx(1, abs=1e-3)
    # the last round's numbers are the last model's on the images still unlabeled, as predict sees them
    labeled = {i for i, _, _ in pool_json(run)["labeled"]}
    unlabeled = [r for r in read_csv(predictions) if int(r["index"]) not in labeled]
    assert len(unlabeled) == N_IMAGES - INITIAL - BUDGET
    assert rows[-1]["pool_mean_conf"] == pytest.approx(np.mean([float(r["confidence"]) for r in unlabeled]),
                                                       abs=1e-3)
    share = {c: sum(r["prediction"] == c for r in unlabeled) / len(unlabeled) for c in CLASSES}
    assert rows[-1]["pool_class_dist"] == pytest.approx(share, abs=1e-4)


def test_ssal_report_on_a_run_without_a_test_set_shows_its_rounds_and_says_what_it_cannot_compare(
        no_test_run, tmp_path, capsys):
    run, _ = no_test_run
    rc, out, err = ssal_here(capsys, "report", str(run), "--out", str(tmp_path / "report"))
    assert rc == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # one line per round: its labels and the confidence, never called an accuracy
        assert f"| {row['round']} | {row['n_labeled']} | none measured (mean confidence " \
               f"{100 * row['pool_mean_conf']:.1f} %) |" in out
    assert "data.test_root" in out and not (tmp_path / "report").exists()


# ----------------------------------------------------------------------------- the labeled layout, answered by people

@pytest.fixture
def labeled_layout_run(labeled_colours, tmp_path, capsys) -> Path:
    """A human run on train/<class>/ + test/<class>/ (data.root without data.classes), stopped at its
    initial batch."""
    root, _ = labeled_colours
    recipe = folder_recipe(tmp_path, root, data={"classes": None}, model={"backbone": "cnn_small"},
                           active={"rounds": 1})
    rc, out, err = ssal_here(capsys, "run", str(recipe))
    assert rc == 0, err
    return tmp_path / "runs" / "human"


def test_label_studio_tasks_of_a_labeled_layout_point_at_images_under_the_served_data_root(
        labeled_colours, labeled_layout_run, tmp_path, capsys):
    root, _ = labeled_colours
    rc, out, err = ssal_here(capsys, "label", "export", str(labeled_layout_run), "--out", str(tmp_path / "t.json"))
    assert rc == 0, err
    # Label Studio serves files under a storage, never at its document root: the root's parent, a storage on it
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root.resolve().parent};" in out
    assert f"Local files, absolute local path {root.resolve()} " in out
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert len(tasks) == INITIAL
    missing = [t["data"]["image"] for t in tasks
               if not (root.parent / t["data"]["image"].split("?d=", 1)[1]).is_file()]
    assert not missing, f"Label Studio serving {root.parent} finds none of {missing[:3]}"


def test_a_csv_of_absolute_paths_answers_a_labeled_layout_run(labeled_colours, labeled_layout_run, tmp_path, capsys):
    root, truth = labeled_colours
    queried = selections(labeled_layout_run)["initial"]
    order = sorted(truth)  # the pool: train/<class>/<file>, sorted
    answers = tmp_path / "absolute.csv"
    with answers.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in queried["indices"]:
            w.writerow([str(root / order[i]), truth[order[i]]])
    rc, out, err = ssal_here(capsys, "label", "import", str(labeled_layout_run), str(answers))
    assert rc == 0, err
    assert f"all {INITIAL} answered" in out, out
