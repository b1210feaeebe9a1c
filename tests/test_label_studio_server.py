"""Label Studio as a real partner (issue 36), against a real Label Studio server: the one scripts/test.sh
installs into .lsvenv (label-studio 1.23.2, in its own venv: its pins are not ssal's), started here on
127.0.0.1 and driven through its REST API as a team would click through it. Three rounds per case, on a
flat folder and on a nested one (names with spaces), one project reused across the rounds; in every
round two annotators (agreeing on one task, disagreeing on another), a cancelled task, an annotation
changed after it was submitted, and an export of the round or of the whole project in JSON, JSON-MIN or
CSV. The test keeps its own record of what the annotators did and settles it by hand under the chosen
``--annotators`` rule; at the end ``pool.json`` must hold exactly those answers. Every image URL of
every task must return the image's bytes from Label Studio, and the labeling stream must show the
model's suggestions of the round (the model-version step ``ssal label export`` prints)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssal.data.pool import SKIP
from ssal.run.readers import read_metrics
from tests.test_human_loop import (  # noqa: F401  (one_thread: autouse)
    CLASSES,
    colour_image,
    folder_recipe,
    one_error_line,
    one_thread,
    snapshot,
    ssal_here,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOKEN = "ssal-test-token-0123456789"
START_TIMEOUT = 240  # s; 1.23.2 starts in about 45 s on a free 2-core machine (migrations of a new database)


# ----------------------------------------------------------------------------- the server

def _installed() -> Path:
    """Label Studio's executable, once scripts/test.sh's install (which runs beside the first tests) ends."""
    done = os.environ.get("SSAL_LABEL_STUDIO_INSTALL")  # the file the background install writes its status to
    if done:
        deadline = time.monotonic() + 900
        while not Path(done).exists() and time.monotonic() < deadline:
            time.sleep(2)
        status = Path(done).read_text().strip() if Path(done).exists() else "timed out"
        if status != "0":
            log = REPO / ".lsvenv.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"installing Label Studio into .lsvenv failed ({status}):\n{tail}")
    exe = Path(os.environ.get("SSAL_LABEL_STUDIO", REPO / ".lsvenv" / "bin" / "label-studio"))
    if not exe.exists():
        pytest.fail(f"no Label Studio at {exe}: scripts/test.sh installs it (or: source scripts/env.sh; "
                    "ssal_ensure_label_studio), SSAL_LABEL_STUDIO names another")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Studio:
    """A Label Studio server and its REST API (``Authorization: Token``), as the admin user."""

    def __init__(self, url: str, documents: Path):
        self.url, self.documents = url, documents

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, method=method, data=data, headers={
            "Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                got = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code} {e.read()[:500]!r}") from None
        return got if raw else json.loads(got or b"null")

    def tasks(self, project: int) -> list[dict]:
        got = self.call("GET", f"/api/tasks?project={project}&page_size=1000")
        return got["tasks"] if isinstance(got, dict) else got

    def annotate(self, task: int, label: str | None, user: int | None = None) -> int:
        """An annotation: ``label``, or None for a cancelled (skipped) task; by ``user`` (default: admin)."""
        result = [] if label is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                            "value": {"choices": [label]}}]
        body = {"result": result, "was_cancelled": label is None}
        if user is not None:
            body["completed_by"] = user
        return self.call("POST", f"/api/tasks/{task}/annotations", body)["id"]

    def change(self, annotation: int, label: str) -> None:
        self.call("PATCH", f"/api/annotations/{annotation}", {"result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]})

    def export(self, project: int, fmt: str, ids: list[int] | None, out: Path) -> Path:
        """The project's export in ``fmt`` (JSON, JSON_MIN, CSV), of the tasks ``ids`` only when given (the
        Data Manager's 'export selected'), written as a user saves it."""
        query = f"exportType={fmt}" + "".join(f"&ids[]={i}" for i in ids or [])
        out.write_bytes(self.call("GET", f"/api/projects/{project}/export?{query}", raw=True))
        return out


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    exe = _installed()
    base = tmp_path_factory.mktemp("label_studio")
    documents = base / "documents"  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: the pools' parent
    documents.mkdir()
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(documents), "LABEL_STUDIO_BASE_DATA_DIR": str(base / "data"),
           "OMP_NUM_THREADS": "1"}
    log = (base / "server.log").open("wb")
    proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                             "--username", "admin@example.com", "--password", "secret-123",
                             "--user-token", TOKEN, "--enable-legacy-api-token"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                tail = (base / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"Label Studio did not start ({shlex.join(proc.args)}):\n{tail}")
            time.sleep(1)
        print(f"Label Studio started in {time.monotonic() - started:.0f} s")
        studio = Studio(url, documents)
        second = studio.call("POST", "/api/users/", {"email": "b@example.com", "username": "annotator-b",
                                                     "first_name": "B"})
        studio.second = second["id"]
        yield studio
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# ----------------------------------------------------------------------------- the pools

def make_pool(root: Path, nested: bool, n: int = 60, seed: int = 1) -> dict[str, str]:
    """``n`` coloured PNGs in ``root`` (flat, or in nested folders whose names hold spaces): their truth."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        c = int(rng.integers(0, 3))
        rel = (Path(["", "2024 trip", "2024 trip/day 2", "misc"][i % 4]) if nested else Path("")) / f"img {i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour_image(rng, c)).save(root / rel)
        truth[rel.as_posix()] = CLASSES[c]
    return truth


def wrong(label: str) -> str:
    return CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]


# ----------------------------------------------------------------------------- what the annotators did

class Record:
    """The annotations of one task as the test made them, in time order: (label or None for a cancel)."""

    def __init__(self):
        self.answers: dict[str, list[str | None]] = {}  # path -> labels, cancels as None, latest last

    def settle(self, path: str, rule: str, fmt: str) -> str | None:
        """What ``rule`` makes of ``path``'s answers in an export of format ``fmt``: a class, 'skip', or
        None (open: not settled, or left out of the export). By hand, independently of ssal's code."""
        got = self.answers[path]
        if fmt != "JSON":  # JSON-MIN and CSV leave cancelled annotations out
            got = [a for a in got if a is not None]
        if not got:
            return None
        got = ["skip" if a is None else a for a in got]
        if len(set(got)) == 1:
            return got[0]
        if rule == "latest":
            return got[-1]
        if rule == "majority":
            counts = sorted((got.count(a) for a in set(got)), reverse=True)
            return max(set(got), key=got.count) if counts[0] > counts[1] else None
        return None  # refuse (the whole file) and agree: not settled


def import_export(capsys, run: Path, export: Path, rule: str) -> tuple[int, str, str]:
    args = ["label", "import", str(run), str(export)]
    if rule != "refuse":
        args += ["--annotators", rule]
    return ssal_here(capsys, *args)


# ----------------------------------------------------------------------------- three rounds

CASES = [  # (folder, export format, annotator rule)
    ("flat", "JSON", "refuse"),
    ("nested", "JSON_MIN", "agree"),
    ("flat", "CSV", "majority"),
    ("nested", "JSON", "latest"),
]


@pytest.mark.parametrize(("layout", "fmt", "rule"), CASES, ids=["-".join(c) for c in CASES])
def test_three_rounds_through_a_real_label_studio(studio, tmp_path, capsys, layout, fmt, rule):
    name = f"{layout}-{fmt}-{rule}".lower().replace("_", "")
    root = studio.documents / name
    truth = make_pool(root, nested=layout == "nested")
    recipe = folder_recipe(tmp_path, root, name, model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"initial": 8, "budget": 6, "rounds": 2})
    run = tmp_path / "runs" / name
    rc, out, err = ssal_here(capsys, "run", str(recipe))
    assert rc == 0, err

    record = Record()
    project = None
    for r in range(3):  # the first batch, then the batches of rounds 0 and 1
        batch = "initial" if r == 0 else f"r{r - 1:02d}"
        rc, out, err = ssal_here(capsys, "label", "export", str(run))
        assert rc == 0, err
        tasks_file, config = run / "rounds" / batch / "tasks.json", run / "rounds" / batch / "tasks.xml"
        # the printed steps, exactly: the document root is the folder's parent, the storage the folder
        assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={studio.documents}" in out, out
        assert f"absolute local path {root}" in out, out
        if project is None:  # one project for all rounds, as teams do; steps (2) and (3) of the export
            project = studio.call("POST", "/api/projects", {"title": name, "label_config": config.read_text()})["id"]
            studio.call("POST", "/api/storages/localfiles", {"project": project, "path": str(root), "title": name})
        before = {t["id"] for t in studio.tasks(project)}
        studio.call("POST", f"/api/projects/{project}/import", json.loads(tasks_file.read_text()))
        if r > 0:  # the printed model-version step, as the REST call it names
            version = f"ssal rounds/{batch}"
            assert f"PATCH /api/projects/<id> with {{\"model_version\": \"{version}\"}}" in out, out
            studio.call("PATCH", f"/api/projects/{project}", {"model_version": version})
        tasks = sorted((t for t in studio.tasks(project) if t["id"] not in before), key=lambda t: t["data"]["query"])
        selected = json.loads((run / "rounds" / batch / "selected.json").read_text())
        assert [t["data"]["path"] for t in tasks] == selected["paths"]  # 8, then 6 (7 after a skip)

        for t in studio.tasks(project):  # every task's image, this round's and the earlier ones'
            got = studio.call("GET", t["data"]["image"], raw=True)
            assert got == (root / t["data"]["path"]).read_bytes(), t["data"]
        if r > 0:  # the labeling stream shows the round's suggestion with the model's confidence as score
            nxt = studio.call("GET", f"/api/projects/{project}/next")
            assert nxt["id"] in {t["id"] for t in tasks}
            shown = nxt["predictions"]
            assert [p["model_version"] for p in shown] == [f"ssal rounds/{batch}"], shown
            assert shown[0]["result"][0]["value"]["choices"][0] in CLASSES and 0 < shown[0]["score"] <= 1

        # the annotators: A answers everything, B agrees on task 0 and disagrees on task 1 (later),
        # A cancels task 2, and A changes task 3 after submitting a wrong answer
        paths = [t["data"]["path"] for t in tasks]
        b_annotation = None
        for k, (t, path) in enumerate(zip(tasks, paths, strict=True)):
            if k == 2:
                studio.annotate(t["id"], None)
                record.answers[path] = [None]
                continue
            if k == 3:
                studio.change(studio.annotate(t["id"], wrong(truth[path])), truth[path])
            else:
                studio.annotate(t["id"], truth[path])
            record.answers[path] = [truth[path]]
            if k in (0, 1):
                time.sleep(0.01)  # B's annotation is the later one
                label = truth[path] if k == 0 else wrong(truth[path])
                annotation = studio.annotate(t["id"], label, user=studio.second)
                record.answers[path].append(label)
                if k == 1:
                    b_annotation = annotation

        ids = None if r % 2 == 0 else [t["id"] for t in tasks]  # the whole project, or the round's tasks
        export = studio.export(project, fmt, ids, tmp_path / f"export_{r}.{'csv' if fmt == 'CSV' else 'json'}")
        rc, out, err = import_export(capsys, run, export, rule)
        settled = {p: record.settle(p, rule, fmt) for p in paths}
        if rule == "refuse":  # the default: two different answers refuse the file, naming the image
            assert rc == 2, out
            assert err.startswith("ssal: error: ") and len(err.strip().splitlines()) == 1, err
            assert f"'{paths[1]}'" in err and "--annotators" in err, err
        else:
            assert rc == 0, err
            still = [p for p in paths if settled[p] is None]
            for p in still:  # unsettled or left out: named
                assert f"'{p}'" in out, (p, out)
            assert (paths[1] in still) == (rule != "latest")
            assert (paths[2] in still) == (fmt != "JSON")

        # the team settles what is open: B changes their answer to A's; someone labels the cancelled task
        # when the export left the cancel out
        if rule != "latest":
            studio.change(b_annotation, truth[paths[1]])
            record.answers[paths[1]][-1] = truth[paths[1]]
        if fmt != "JSON":
            studio.annotate(tasks[2]["id"], truth[paths[2]], user=studio.second)
            record.answers[paths[2]].append(truth[paths[2]])
        export = studio.export(project, fmt, ids, tmp_path / f"export_{r}b.{'csv' if fmt == 'CSV' else 'json'}")
        rc, out, err = import_export(capsys, run, export, rule)
        assert rc == 0, err
        assert "await" not in out and "left open" not in out, out
        if r > 0 and ids is None:
            assert "answers to earlier batches agree with the pool" in out, out

        rc, out, err = ssal_here(capsys, "run", "--resume", str(run))
        assert rc == 0, err

    pool = json.loads((run / "pool.json").read_text())  # the answers, exactly
    stored = {path: ("skip" if y == SKIP else CLASSES[y]) for (_, y, _), path in
              zip(pool["labeled"], pool["paths"], strict=True)}
    expected = {p: record.settle(p, rule, fmt) for p in record.answers}
    assert stored == expected
    assert sum(v == "skip" for v in expected.values()) == (3 if fmt == "JSON" else 0)
    # a skipped image leaves the pool, is never asked again, and the next round buys one more label
    batches = [json.loads((run / "rounds" / b / "selected.json").read_text())["paths"]
               for b in ("initial", "r00", "r01")]
    skips = [sum(expected[p] == "skip" for p in b) for b in batches]
    assert [len(b) for b in batches] == [8, 6 + skips[0], 6 + skips[1]]
    assert len({p for b in batches for p in b}) == sum(len(b) for b in batches)
    trained = np.cumsum([len(b) - s for b, s in zip(batches, skips, strict=True)])
    assert [m["n_labeled"] for m in read_metrics(run)] == trained.tolist()
    if rule == "latest":  # B's later, different answer won in every round
        assert sum(v != truth[p] and v != "skip" for p, v in expected.items()) == 3


# ----------------------------------------------------------------------------- ssal label push / pull

def readme_walk() -> list[str]:
    """The README's Label Studio walk-through: its bash block's commands, comments and continuations joined."""
    block = next(b for b in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
                 if "ssal label push" in b)
    lines = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_walk_through_push_and_pull_and_the_errors_a_person_can_meet(studio, tmp_path, capsys,
                                                                                  monkeypatch):
    walk = readme_walk()
    # the install and the start are what scripts/test.sh and the fixture above do
    spec = subprocess.run(["bash", "-c", f"source {REPO}/scripts/env.sh; ssal_label_studio_spec"], capture_output=True,
                          text=True, check=True).stdout.split()
    install = next(c for c in walk if "pip install" in c)
    assert shlex.split(install.split("pip install", 1)[1]) == spec
    start = next(c for c in walk if "label-studio start" in c)
    assert "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$HOME" in start
    steps = [shlex.split(c) for c in walk if c.startswith("ssal ")]
    assert [s[:3] for s in steps] == [["ssal", "run", "my_project/recipe.yaml"], ["ssal", "label", "push"],
                                      ["ssal", "label", "pull"], ["ssal", "run", "--resume"]]

    # the README's world: ~/photos under Label Studio's document root, my_project beside it
    monkeypatch.setenv("HOME", str(studio.documents))
    monkeypatch.chdir(tmp_path)
    root = studio.documents / "photos"
    truth = make_pool(root, nested=True, seed=2)
    recipe = folder_recipe(tmp_path, root, "pushpull", model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"initial": 8, "budget": 6, "rounds": 2})
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "recipe.yaml").write_text(
        recipe.read_text().replace(str(tmp_path / "runs" / "pushpull"), str(tmp_path / "my_project" / "run")))
    run = tmp_path / "my_project" / "run"
    exported = dict(kv.split("=", 1) for kv in shlex.split(next(c for c in walk if c.startswith("export ")))[1:])
    assert sorted(exported) == ["LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL"]
    monkeypatch.setenv("LABEL_STUDIO_URL", studio.url)

    def step(k: int) -> tuple[int, str, str]:
        return ssal_here(capsys, *steps[k][1:])

    assert step(0)[0] == 0  # ssal run: the first batch
    # errors before anything is pushed: one line each, nothing in the run changes
    before = snapshot(run)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-token")
    rc, out, err = step(1)
    assert rc == 2 and out == ""
    one_error_line(err, f"Label Studio at {studio.url} refused the token (HTTP 401", "--token or LABEL_STUDIO_API_KEY")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    rc, out, err = step(2)
    assert rc == 2
    one_error_line(err, "has no project 'ssal my_project/run ", "push the open batch first")
    rc, out, err = ssal_here(capsys, "label", "push", "my_project/run", "--project", "9999")
    assert rc == 2
    one_error_line(err, "has no project 9999", "leave out --project")
    assert snapshot(run) == before

    # a personal access token (a JWT) works as the legacy token does
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", studio.call("POST", "/api/token/", {})["token"])
    project = None
    for r in range(3):
        batch = "initial" if r == 0 else f"r{r - 1:02d}"
        started = time.monotonic()
        for again in (False, True):  # pushing twice imports nothing twice
            rc, out, err = step(1)
            assert rc == 0, err
            assert ("were there already" in out) == again, out
        pid = int(out.split("(id ")[1].split(")")[0].split(",")[0])
        assert project in (None, pid)  # one project for every round
        project = pid
        tasks = [t for t in studio.tasks(project) if not t["total_annotations"]]
        selected = json.loads((run / "rounds" / batch / "selected.json").read_text())
        assert sorted(t["data"]["path"] for t in tasks) == sorted(selected["paths"])
        for t in tasks:
            assert studio.call("GET", t["data"]["image"], raw=True) == (root / t["data"]["path"]).read_bytes()
        if r > 0:  # the stream shows this round's suggestions without a hand step
            assert [p["model_version"] for p in studio.call("GET", f"/api/projects/{project}/next")["predictions"]] \
                == [f"ssal rounds/{batch}"]
        for k, t in enumerate(tasks):
            studio.annotate(t["id"], truth[t["data"]["path"]])
            if k == 0:  # a second annotator who disagrees, then a third who agrees with the first
                studio.annotate(t["id"], wrong(truth[t["data"]["path"]]), user=studio.second)
                studio.annotate(t["id"], truth[t["data"]["path"]], user=studio.second)
        if r == 0:  # the default rule names the disagreement, and the export as the person knows it
            rc, out, err = ssal_here(capsys, "label", "pull", "my_project/run")
            assert rc == 2
            one_error_line(err, f"the export of Label Studio project {project}", "different answers", "--annotators")
        rc, out, err = step(2)  # --annotators majority
        assert rc == 0, err
        assert out.startswith(f"from Label Studio project {project}: imported ") and "all" in out, out
        with capsys.disabled():
            print(f"round trip {batch}: push twice, {len(tasks) + 2} annotations, pull: "
                  f"{time.monotonic() - started:.2f} s")
        assert step(3)[0] == 0  # ssal run --resume
    pool = json.loads((run / "pool.json").read_text())
    assert {p: CLASSES[y] for (_, y, _), p in zip(pool["labeled"], pool["paths"], strict=True)} == \
        {p: truth[p] for p in pool["paths"]}
    assert len(pool["paths"]) == 8 + 6 + 6 and len(read_metrics(run)) == 3


def test_a_folder_label_studio_cannot_serve_is_one_line_naming_the_document_root_it_needs(studio, tmp_path, capsys,
                                                                                          monkeypatch):
    root = tmp_path / "elsewhere" / "photos"  # not under the server's document root
    make_pool(root, nested=False, n=20)
    recipe = folder_recipe(tmp_path, root, "elsewhere", model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"initial": 4, "budget": 2, "rounds": 1})
    run = tmp_path / "runs" / "elsewhere"
    assert ssal_here(capsys, "run", str(recipe))[0] == 0
    monkeypatch.setenv("LABEL_STUDIO_URL", studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    before = snapshot(run)
    rc, out, err = ssal_here(capsys, "label", "push", str(run))
    assert rc == 2 and out == ""
    one_error_line(err, "/api/storages/localfiles with HTTP 400",
                   f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root.parent}")
    assert snapshot(run) == before
