"""Issue 33, the folder walks: a folder of images is walked so that each real image file is in the
pool once, under its real name; no link out of the folder or back into it is followed; the walk has
a bound; and what it left out is said in one note line, by reason, with a count.

The old walk (``os.walk(followlinks=True)``) turned ``self -> .`` into 40 copies of the folder and
walked ``up -> ..`` (with ``self``: without end). Each load below therefore runs in a forked child
(or a subprocess) with a timeout, so that a walk without end fails the test instead of hanging the
suite. The expected pool is a brute-force reference: the regular, non-hidden image files that
``os.walk`` finds without following any link, one name per file (a hard link is a second name).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bad_inputs import diff, snapshot
from test_human_loop import (  # noqa: F401  (one_thread: a module fixture, autouse)
    CLASSES,
    colour_image,
    folder_recipe,
    one_error_line,
    one_thread,
    read_csv,
    ssal_here,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # the only kinds these tests write
LOAD_TIMEOUT = 15  # seconds for one load in a child: the fixed walk takes milliseconds
COMMAND_TIMEOUT = 60  # seconds for `ssal run` / `ssal predict` in a subprocess (a few seconds when fixed)

# a keyword of each reason the note may give (the note's own wording, matched loosely)
HIDDEN, NOT_IMAGE, OUT, WALKED, SECOND, BROKEN, SPECIAL, LOOSE = (
    "hidden", "not images", "links out", "already walked", "second names", "broken", "special", "outside the class")
KEYWORDS = (HIDDEN, NOT_IMAGE, OUT, WALKED, SECOND, BROKEN, SPECIAL, LOOSE)


# ----------------------------------------------------------------------------- folders and references

def image(path: Path, seed: int) -> Path:
    """A small PNG whose pixels differ from every other one's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour_image(np.random.default_rng(seed), seed % 3)).save(path)
    return path


def base_folder(tmp: Path) -> Path:
    """``tmp/photos`` (the root: 4 images flat, 3 in sub/, 2 in a/b/) beside ``tmp/outside`` and
    ``tmp/photos_more`` (2 images each), which no walk of the root may reach."""
    root = tmp / "photos"
    for i in range(4):
        image(root / f"img{i:02d}.png", i)
    for i in range(3):
        image(root / "sub" / f"s{i}.png", 10 + i)
    for i in range(2):
        image(root / "a" / "b" / f"ab{i}.png", 20 + i)
        image(tmp / "outside" / f"o{i}.png", 30 + i)
        image(tmp / "photos_more" / f"m{i}.png", 40 + i)
    return root


def real_images(root: Path) -> dict[tuple[int, int], list[str]]:
    """Brute force: {file identity: its names relative to ``root``} of the regular image files under
    ``root`` that os.walk reaches without following links, nothing hidden."""
    out: dict[tuple[int, int], list[str]] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if name.startswith(".") or not stat.S_ISREG(st.st_mode) or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            out.setdefault((st.st_dev, st.st_ino), []).append(Path(os.path.relpath(path, root)).as_posix())
    return out


def assert_each_real_image_once(names: list[str], root: Path) -> None:
    """``names`` (a pool, relative paths) holds one name of each real image file under ``root``, nothing else."""
    reference = real_images(root)
    assert len(names) == len(set(names)), f"names repeated: {sorted(n for n in set(names) if names.count(n) > 1)[:5]}"
    extra = set(names) - {n for group in reference.values() for n in group}
    assert not extra, f"{len(extra)} names that are no real image under {root}: {sorted(extra)[:5]}"
    for group in reference.values():
        times = len(set(group) & set(names))
        assert times == 1, f"the file named {group} is in the pool {times}x"
    assert len(names) == len(reference)


def parse_note(note: str, what: str, root: Path) -> tuple[int, dict[str, tuple[int, str]]]:
    """(images, {reason keyword: (count, example)}) of a note "WHAT 'ROOT': N images; left out R: C (e.g. X); ..."."""
    assert "\n" not in note, note
    m = re.fullmatch(rf"{re.escape(what)} '(.*)': (\d+) images; left out (.*)", note)
    assert m, f"not a note of {what}: {note!r}"
    assert m[1] == str(root), note
    reasons: dict[str, tuple[int, str]] = {}
    for part in m[3].split("; "):
        pm = re.fullmatch(r"(.*): (\d+) \(e\.g\. (.*)\)", part)
        assert pm, f"{part!r} in {note!r}"
        keys = [k for k in KEYWORDS if k in pm[1]]
        assert len(keys) == 1, f"reason {pm[1]!r} matches {keys}"
        assert keys[0] not in reasons, note
        reasons[keys[0]] = (int(pm[2]), pm[3])
    return int(m[2]), reasons


def assert_note(note: str | None, root: Path, images: int, expected: dict[str, tuple[int, set[str]]],
                what: str = "data.root") -> None:
    """The note counts ``images`` and names exactly the reasons of ``expected`` ({keyword: (count, the names
    one of which is the example)})."""
    assert note, f"nothing says what was left out of {root} (expected {expected})"
    n, reasons = parse_note(note, what, root)
    assert n == images, note
    assert set(reasons) == set(expected), f"reasons {sorted(reasons)} != {sorted(expected)}: {note}"
    for key, (count, examples) in expected.items():
        assert reasons[key][0] == count, f"{key}: {reasons[key][0]} != {count}: {note}"
        assert reasons[key][1] in examples, f"{key}: example {reasons[key][1]!r} not one of {examples}: {note}"


# ----------------------------------------------------------------------------- a load that cannot hang the suite

def _load_child(conn, data: dict) -> None:
    try:
        import resource

        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = size + (3 << 30)  # a walk without end runs out of memory here, not on the machine
        if hard == resource.RLIM_INFINITY or hard > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        from ssal.data.datasets import load_dataset
        from ssal.recipe import DataConfig

        start = time.perf_counter()
        ds = load_dataset(DataConfig(**data))
        seconds = time.perf_counter() - start
        test = ds.test.files()
        conn.send({"names": ds.names(), "notes": getattr(ds, "notes", None), "seconds": seconds,
                   "targets": ds.train.targets.tolist(), "classes": list(ds.classes),
                   "test": None if test is None else test[1], "test_targets": ds.test.targets.tolist()})
    except BaseException as e:  # noqa: BLE001 (the parent reports it)
        conn.send({"error": f"{type(e).__name__}: {str(e)[:1500]}"})
    finally:
        conn.close()


def load(root: Path, **data) -> dict:
    """load_dataset of an imagefolder data section on ``root`` in a forked child that is killed after
    LOAD_TIMEOUT s: {names, notes, seconds, ...} or {error} or {timeout}. Mean/std are given so that the
    child decodes no pixels with torch (it only checks that the images decode)."""
    section = {"dataset": "imagefolder", "root": str(root), "image_size": 16, "mean": [0.5], "std": [0.25], **data}
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_load_child, args=(send, section))
    child.start()
    send.close()
    try:
        got = receive.recv() if receive.poll(LOAD_TIMEOUT) else {"timeout": LOAD_TIMEOUT}
    except EOFError:
        got = {"error": f"the loading process died (exit status {child.exitcode})"}
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    return got


def assert_loaded(got: dict) -> dict:
    assert "timeout" not in got, f"loading the folder did not end within {got.get('timeout')} s (a walk without end)"
    assert "error" not in got, f"loading the folder failed: {got.get('error')}"
    assert got["seconds"] < 10, f"loading a folder of a dozen images took {got['seconds']:.1f} s"
    return got


# ----------------------------------------------------------------------------- the link shapes

def _links(root: Path, tmp: Path) -> dict:
    """{shape: (make it, {reason keyword: (count, names one of which the note gives as example)})}."""
    def symlink(target, name):
        return lambda: os.symlink(target, root / name)

    def hard_link():
        os.link(root / "img02.png", root / "hard.png")

    def chains():
        os.symlink("c2", root / "c1")
        os.symlink("sub", root / "c2")
        os.symlink("f2.png", root / "f1.png")
        os.symlink("img03.png", root / "f2.png")

    def out_and_back():
        os.symlink(str(root / "sub"), tmp / "outside" / "back")
        os.symlink("../outside/back", root / "via")

    def two_links_at_each_other():
        os.symlink("l2.png", root / "l1.png")
        os.symlink("l1.png", root / "l2.png")

    def hidden():
        image(root / ".h.png", 50)
        image(root / ".thumbs" / "t.png", 51)
        image(root / "sub" / ".x.png", 52)
        os.symlink("..", root / ".up")
        (root / "notes.txt").write_text("not an image\n")

    return {
        "self -> .": (symlink(".", "self"), {WALKED: (1, {"self"})}),
        "up -> ..": (symlink("..", "up"), {OUT: (1, {"up"})}),
        "self -> . and up -> ..": (lambda: (os.symlink(".", root / "self"), os.symlink("..", root / "up")),
                                   {WALKED: (1, {"self"}), OUT: (1, {"up"})}),
        "a/b/back -> ../.. (a loop two levels deep)": (symlink("../..", "a/b/back"), {WALKED: (1, {"a/b/back"})}),
        "a_alias -> sub (a second path to a folder inside)": (symlink("sub", "a_alias"), {WALKED: (1, {"a_alias"})}),
        "out_rel -> ../outside (relative)": (symlink("../outside", "out_rel"), {OUT: (1, {"out_rel"})}),
        "out_abs -> /abs/outside (absolute)": (symlink(str(tmp / "outside"), "out_abs"), {OUT: (1, {"out_abs"})}),
        "twin -> ../photos_more (a name that starts like the root's)": (symlink("../photos_more", "twin"),
                                                                         {OUT: (1, {"twin"})}),
        "ext.png -> ../outside/o0.png (a file outside)": (symlink("../outside/o0.png", "ext.png"),
                                                          {OUT: (1, {"ext.png"})}),
        "a0.png -> img01.png (a file inside, by a second name)": (symlink("img01.png", "a0.png"),
                                                                  {SECOND: (1, {"a0.png"})}),
        "a hard link": (hard_link, {SECOND: (1, {"hard.png", "img02.png"})}),
        "chains of links (c1 -> c2 -> sub, f1.png -> f2.png -> img03.png)": (
            chains, {WALKED: (2, {"c1", "c2"}), SECOND: (2, {"f1.png", "f2.png"})}),
        "a link out of the folder and back into it": (out_and_back, {WALKED: (1, {"via"})}),
        "a broken link": (symlink("nowhere.png", "gone.png"), {BROKEN: (1, {"gone.png"})}),
        "two links pointing at each other": (two_links_at_each_other, {BROKEN: (2, {"l1.png", "l2.png"})}),
        "an absolute link to the root itself": (symlink(str(root.resolve()), "root_abs"),
                                                {WALKED: (1, {"root_abs"})}),
        "a pipe named x.png": (lambda: os.mkfifo(root / "x.png"), {SPECIAL: (1, {"x.png"})}),
        "hidden files, a hidden folder, a hidden link and a text file": (
            hidden, {HIDDEN: (4, {".h.png", ".thumbs", "sub/.x.png", ".up"}), NOT_IMAGE: (1, {"notes.txt"})}),
    }


SHAPES = list(_links(Path("/r"), Path("/t")))
ONE_EACH = [s for s in SHAPES if s != "self -> . and up -> .."]  # every link once: they can share a folder


def build(tmp: Path, shapes: list[str]) -> tuple[Path, dict]:
    """The base folder with the link ``shapes`` made in it: (root, the merged expectation of the note)."""
    root = base_folder(tmp)
    table = _links(root, tmp)
    expected: dict[str, tuple[int, set[str]]] = {}
    for shape in shapes:
        make, reasons = table[shape]
        make()
        for key, (count, names) in reasons.items():
            have = expected.get(key, (0, set()))
            expected[key] = (have[0] + count, have[1] | names)
    return root, expected


@pytest.mark.parametrize("shape", SHAPES)
def test_each_link_shape_leaves_each_real_image_once_and_the_note_counts_what_was_left_out(tmp_path, shape):
    root, expected = build(tmp_path, [shape])
    got = assert_loaded(load(root, classes=["a", "b"]))
    assert_each_real_image_once(got["names"], root)
    assert got["names"] == sorted(got["names"])
    assert len(got["notes"] or []) == 1, f"one note should say what was left out of {root}: {got['notes']}"
    assert_note(got["notes"][0], root, len(got["names"]), expected)


def test_all_the_link_shapes_in_one_folder_leave_the_nine_real_images_once(tmp_path):
    root, expected = build(tmp_path, ONE_EACH)
    got = assert_loaded(load(root, classes=["a", "b"]))
    assert_each_real_image_once(got["names"], root)
    by_hand = {"img00.png", "img01.png", "img03.png", "sub/s0.png", "sub/s1.png", "sub/s2.png", "a/b/ab0.png",
               "a/b/ab1.png"}  # and img02.png under one of its two names
    assert len(got["names"]) == 9 and set(got["names"]) - {"img02.png", "hard.png"} == by_hand, got["names"]
    assert_note(got["notes"][0], root, 9, expected)


def test_a_data_root_named_through_a_link_is_walked_inside_its_real_folder_only(tmp_path):
    root, expected = build(tmp_path, ["self -> . and up -> ..", "a/b/back -> ../.. (a loop two levels deep)"])
    named = tmp_path / "named"
    os.symlink(root, named)
    got = assert_loaded(load(named, classes=["a", "b"]))
    assert_each_real_image_once(got["names"], named)
    assert_note(got["notes"][0], named, 9, expected)


def test_a_labeled_layout_with_loops_in_its_class_folders_keeps_each_image_once_with_its_class(tmp_path):
    root = tmp_path / "labeled"
    for split, n in (("train", 4), ("test", 2)):
        for c, cls in enumerate(["a", "b"]):
            for i in range(n):
                image(root / split / cls / f"{cls}{i}.png", 100 * c + 10 * (split == "test") + i)
    image(tmp_path / "elsewhere" / "e.png", 7)
    os.symlink("..", root / "train" / "a" / "again")          # back to train/: a folder already walked
    os.symlink(".", root / "train" / "b" / "self")            # itself
    os.symlink(str(tmp_path / "elsewhere"), root / "train" / "b" / "out")  # out of the folder
    os.symlink("../..", root / "test" / "a" / "up")           # to data.root: out of test/
    image(root / "train" / "loose.png", 8)                    # in no class folder
    got = assert_loaded(load(root))
    assert got["classes"] == ["a", "b"]
    expected_train = [f"train/{c}/{c}{i}.png" for c in "ab" for i in range(4)]
    assert got["names"] == expected_train
    assert got["targets"] == [0] * 4 + [1] * 4
    assert got["test"] == [f"test/{c}/{c}{i}.png" for c in "ab" for i in range(2)]
    assert got["test_targets"] == [0] * 2 + [1] * 2
    notes = got["notes"] or []
    assert len(notes) == 2, notes
    assert_note(notes[0], root / "train", 8, {WALKED: (2, {"a/again", "b/self"}), OUT: (1, {"b/out"}),
                                              LOOSE: (1, {"loose.png"})})
    assert_note(notes[1], root / "test", 4, {OUT: (1, {"a/up"})})


def test_links_in_data_root_into_data_test_root_put_no_test_image_in_the_pool(tmp_path):
    """walk_images promises "nothing under the folder skip (a test folder inside the pool's folder)": a
    test image reached through a link would be an image the model is measured on and may be trained on."""
    root = base_folder(tmp_path)
    for c in ("a", "b"):
        for i in range(2):
            image(root / "test" / c / f"{c}{i}.png", 60 + 2 * (c == "b") + i)
    os.symlink("test", root / "tst")                # the test folder by a second name
    os.symlink("test/a", root / "peek")             # one of its class folders
    os.symlink("test/b/b0.png", root / "peek.png")  # one of its images
    got = assert_loaded(load(root, classes=["a", "b"], test_root=str(root / "test")))
    assert got["test"] == ["a/a0.png", "a/a1.png", "b/b0.png", "b/b1.png"]
    pool = {n for group in real_images(root).values() for n in group if not n.startswith("test/")}
    assert len(pool) == 9
    assert set(got["names"]) == pool, f"test images in the pool: {sorted(set(got['names']) - pool)}"


# ----------------------------------------------------------------------------- the bound

def test_a_walk_past_its_bound_is_one_data_error_line_naming_the_folder(tmp_path):
    try:
        from ssal.data.walk import walk_images
        from ssal.errors import DataError
    except ImportError as e:
        pytest.fail(f"ssal has no bounded folder walk ({e})")
    root = tmp_path / "twenty"
    for i in range(20):
        image(root / f"p{i:02d}.png", i)
    assert len(walk_images(root, limit=20).files) == 20  # 20 entries: within a bound of 20
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        walk_images(root, limit=10)
    assert time.perf_counter() - start < 5
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg and "10" in msg, msg
    # a loop is no way round the bound: 19 files and `self -> .` are 20 entries, not 19 x 40
    (root / "p19.png").unlink()
    os.symlink(".", root / "self")
    assert len(walk_images(root, limit=20).files) == 19
    with pytest.raises(DataError):
        walk_images(root, limit=19)


# ----------------------------------------------------------------------------- through the user's doors

def test_ssal_init_on_a_folder_of_loops_and_links_prints_the_real_count_and_one_note_line(tmp_path, capsys):
    root, expected = build(tmp_path, ONE_EACH)
    os.symlink("nowhere\nat all.png", root / "gone\nagain.png")  # a name that would break the line
    expected[BROKEN] = (expected[BROKEN][0] + 1, expected[BROKEN][1] | {"gone\\nagain.png"})
    project = tmp_path / "project"
    start = time.perf_counter()
    rc, out, err = ssal_here(capsys, "init", str(project), "--images", str(root), "--classes", "a,b")
    assert time.perf_counter() - start < 30
    assert rc == 0, err
    lines = out.strip("\n").splitlines()
    n = len(real_images(root))
    assert f"{n} images to label in {root.resolve()}" in lines[0], out
    notes = [line[len("note: "):] for line in lines if line.startswith("note: ")]
    assert len(notes) == 1, out
    assert_note(notes[0], root.resolve(), n, expected)
    assert (project / "recipe.yaml").is_file()


def test_ssal_init_on_a_folder_whose_images_are_all_behind_links_out_is_one_error_line_and_writes_nothing(
        tmp_path, capsys):
    root = tmp_path / "links_only"
    root.mkdir()
    for i in range(3):
        image(tmp_path / "outside" / f"o{i}.png", i)
    os.symlink("../outside", root / "out")
    os.symlink("../outside/o0.png", root / "o0.png")
    os.symlink(".", root / "self")
    before = snapshot(tmp_path)  # links recorded as links
    rc, out, err = ssal_here(capsys, "init", str(tmp_path / "project"), "--images", str(root), "--classes", "a,b")
    assert rc == 2, out + err
    line = one_error_line(err, str(root), "no image")
    assert "links out" in line, line
    assert "Traceback" not in err
    after = snapshot(tmp_path)
    assert after == before, diff(before, after)
    assert not (tmp_path / "project").exists()


def test_ssal_init_on_a_folder_named_with_a_line_break_holding_only_a_loop_is_one_error_line(tmp_path, capsys):
    root = tmp_path / "my\nphotos"
    root.mkdir()
    os.symlink(".", root / "self")
    image(tmp_path / "beside.png", 1)
    os.symlink("../beside.png", root / "beside.png")
    before = snapshot(tmp_path)
    rc, out, err = ssal_here(capsys, "init", str(tmp_path / "project"), "--images", str(root), "--classes", "a,b")
    assert rc == 2, out + err
    one_error_line(err, "no image")
    after = snapshot(tmp_path)
    assert after == before, diff(before, after)


def _subprocess(*args: str) -> tuple[int, str, str, float]:
    """``python -m ssal ARGS`` with the package under test first on the path, killed after COMMAND_TIMEOUT s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "ssal", *args, "--no-progress"], env=env, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"'ssal {' '.join(args)}' did not end within {COMMAND_TIMEOUT} s (a walk without end)")
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


@pytest.mark.slow  # 'ssal run' in a process (the walk could loop: it has a timeout)
def test_ssal_run_of_a_human_recipe_on_a_loopy_folder_queries_real_images_only(tmp_path):
    root = tmp_path / "data" / "photos"
    for i in range(24):
        image(root / ["", "2023", "2023/trip"][i % 3] / f"img_{i:02d}.png", i)
    image(tmp_path / "data" / "beside" / "b.png", 99)
    links = {"self": ".", "up": "..", "2023/trip/back": "../..", "again": "2023", "2023/home": str(root)}
    for name, target in links.items():
        os.symlink(target, root / name)
    recipe = folder_recipe(tmp_path, root, "loopy", model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"initial": 12, "budget": 6, "rounds": 2})
    rc, out, err, _ = _subprocess("run", str(recipe))
    assert rc == 0, err[-3000:]
    run = tmp_path / "runs" / "loopy"
    reference = sorted(n for group in real_images(root).values() for n in group)
    assert len(reference) == 24
    rows = read_csv(run / "rounds" / "initial" / "queries.csv")
    assert len(rows) == 12
    paths = [row["path"] for row in rows]
    assert len(set(paths)) == 12 and set(paths) <= set(reference), paths
    for path in paths:
        assert not set(path.split("/")) & {"self", "up", "back", "again", "home"}, path
        assert os.path.realpath(root / path) == os.path.join(os.path.realpath(root), path), path  # no link on the way
    assert json.loads((run / "run.json").read_text())["pool"]["n"] == 24
    notes = [line for line in (out + err).splitlines() if "note: data.root" in line]
    assert len(notes) == 1, out + err
    assert_note(notes[0].split("note: ", 1)[1], root, 24, {WALKED: (4, {"self", "2023/trip/back", "again",
                                                                         "2023/home"}), OUT: (1, {"up"})})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A simulated run on a labeled layout (train/<class>/, test/<class>/), round 0 trained."""
    from ssal.cli import main

    tmp = tmp_path_factory.mktemp("trained")
    root = tmp / "labeled"
    for split, n in (("train", 12), ("test", 6)):
        for c, cls in enumerate(CLASSES):
            for i in range(n):
                image(root / split / cls / f"{i:02d}.png", 3 * i + c)
    recipe = folder_recipe(tmp, root, "trained", data={"classes": None}, model={"backbone": "cnn_small"},
                           train={"steps": 3}, active={"oracle": "simulated", "initial": 9, "rounds": 0})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    return tmp / "runs" / "trained"


@pytest.mark.slow  # 'ssal predict' in a process (the walk could loop: it has a timeout)
def test_ssal_predict_images_on_a_loopy_folder_predicts_each_real_image_once(trained_run, tmp_path):
    root, expected = build(tmp_path, ["self -> . and up -> ..", "a_alias -> sub (a second path to a folder inside)",
                                      "out_abs -> /abs/outside (absolute)", "a hard link", "a broken link",
                                      "hidden files, a hidden folder, a hidden link and a text file"])
    out_file = tmp_path / "predictions.csv"
    rc, out, err, _ = _subprocess("predict", str(trained_run), "--out", str(out_file), "--images", str(root))
    assert rc == 0, err[-3000:]
    rows = read_csv(out_file)
    names = [row["path"] for row in rows]
    assert_each_real_image_once(names, root)
    assert [int(row["index"]) for row in rows] == list(range(len(rows)))
    assert all(row["prediction"] in CLASSES for row in rows), rows[0]
    notes = [line for line in (out + err).splitlines() if line.startswith("note: ")]
    assert len(notes) == 1, out + err
    assert_note(notes[0][len("note: "):], root, 9, expected, what="--images")
