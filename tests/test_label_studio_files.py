"""Label Studio exports as Label Studio really sends them back (issue 36, the import side): a task is
known by ssal's own fields whatever URL its image has now, a whole project's export across rounds is
taken (the earlier rounds' answers recognised), the images an export leaves out are named, and the CSV
export's run column is checked. The exports are built here the way Label Studio 1.23 writes them."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
from pathlib import Path

import pytest

from ssal.data.pool import SKIP
from ssal.errors import DataError
from ssal.experiment import loop
from ssal.label.answers import import_labels
from ssal.label.queries import export_queries
from ssal.recipe import load_recipe
from ssal.run.store import RunDir
from tests.test_human_loop import (  # noqa: F401  (one_thread: autouse, in-process training on one thread)
    CLASSES,
    colour_pool,
    folder_recipe,
    one_thread,
)

STORAGE = "/data/local-files/?d=photos/"  # a Local Files storage one folder above data.root rewrites URLs so


def _tasks(run: Path) -> list[dict]:
    (path, _), _ = export_queries(run, "labelstudio")
    return json.loads(path.read_text())


def _answered(tasks: list[dict], truth: dict[str, str], label=None, rewrite: bool = True) -> list[dict]:
    """Label Studio's JSON export of ``tasks`` answered with the truth (``label(task)`` overrides it), each
    image URL as a storage on the folder's parent serves it."""
    out = []
    for k, task in enumerate(tasks, start=1):
        data = dict(task["data"])
        if rewrite:
            data["image"] = STORAGE + data["path"]
        choice = label(task) if label else truth[data["path"]]
        out.append({"id": k, "data": data, "annotations": [{"id": 100 + k, "was_cancelled": False, "result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]}]})
    return out


@pytest.fixture
def folder(colour_pool):  # noqa: F811  (the session's folder of coloured images, and their truth)
    return colour_pool


@pytest.fixture
def run(folder, tmp_path) -> Path:
    root, _ = folder
    recipe = folder_recipe(tmp_path, root, "ls", model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"rounds": 2})
    return loop.run(load_recipe(recipe), progress=False)


def _write(tmp_path: Path, name: str, tasks: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return path


def test_a_task_is_known_by_ssals_fields_whatever_url_its_image_has_now(run, folder, tmp_path):
    _, truth = folder
    tasks = _tasks(run)
    message = import_labels(run, _write(tmp_path, "first.json", _answered(tasks, truth)))
    assert message.startswith(f"imported {len(tasks)} answers for rounds/initial")
    stored = RunDir(run).answers_of(-1)
    assert stored == {t["data"]["ssal_index"]: CLASSES.index(truth[t["data"]["path"]]) for t in tasks}


def test_a_whole_projects_export_across_rounds_is_taken_and_a_contradiction_is_refused(run, folder,
                                                                                      tmp_path):
    _, truth = folder
    first = _answered(_tasks(run), truth)
    import_labels(run, _write(tmp_path, "first.json", first))
    loop.run(load_recipe(run / "recipe.yaml"), resume=True, progress=False)  # round 0, then r00 is asked
    second = _answered(_tasks(run), truth)
    whole = [*first, *second]  # one project reused: its export holds the first batch's tasks too
    message = import_labels(run, _write(tmp_path, "project.json", whole))
    assert f"imported {len(second)} answers for rounds/r00" in message
    assert f"{len(first)} answers to earlier batches agree with the pool" in message
    assert RunDir(run).answers_of(0) == {t["data"]["ssal_index"]: CLASSES.index(truth[t["data"]["path"]])
                                        for t in second}
    # an earlier task answered otherwise than the pool holds: refused, naming it; nothing is stored
    answers_json = (run / "rounds" / "r00" / "answers.json").read_bytes()
    wrong = first[0]["data"]["path"]
    other = next(c for c in CLASSES if c != truth[wrong])
    changed = _answered(first, truth, label=lambda t: other if t["data"]["path"] == wrong else truth[t["data"]["path"]])
    with pytest.raises(DataError) as e:
        import_labels(run, _write(tmp_path, "changed.json", [*changed, *second]))
    index = first[0]["data"]["ssal_index"]
    assert f"'{wrong}' (index {index}: '{other}', the pool holds '{truth[wrong]}')" in str(e.value)
    assert (run / "rounds" / "r00" / "answers.json").read_bytes() == answers_json


def test_the_images_an_export_leaves_out_are_named(run, folder, tmp_path):
    """JSON-MIN and CSV exports leave cancelled tasks out: the message names what still awaits a label."""
    _, truth = folder
    tasks = _tasks(run)
    minimal = [{"id": k, **t["data"], "label": truth[t["data"]["path"]]} for k, t in enumerate(tasks[1:], start=2)]
    message = import_labels(run, _write(tmp_path, "min.json", minimal))
    assert message.endswith(f"1 of {len(tasks)} images still await labels: '{tasks[0]['data']['path']}'")


def test_the_csv_export_is_read_by_ssals_columns_and_its_run_is_checked(run, folder, tmp_path):
    _, truth = folder
    tasks = _tasks(run)
    columns = ["annotation_id", "annotator", "created_at", "id", "image", "label", "lead_time", "path", "query",
               "ssal_index", "ssal_run", "updated_at"]

    def export(run_id: str) -> Path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns)
        writer.writeheader()
        for k, t in enumerate(tasks, start=1):
            d = t["data"]
            writer.writerow({"annotation_id": 100 + k, "annotator": 1, "created_at": "2026-12-07T10:00:00Z",
                             "id": k, "image": STORAGE + d["path"], "label": truth[d["path"]], "lead_time": 2.5,
                             "path": d["path"], "query": d["query"], "ssal_index": d["ssal_index"],
                             "ssal_run": run_id, "updated_at": "2026-12-07T10:00:00Z"})
        path = tmp_path / f"{run_id}.csv"
        path.write_text(buf.getvalue())
        return path

    with pytest.raises(DataError, match="answers another run"):
        import_labels(run, export("0123456789ab"))
    assert RunDir(run).answers_of(-1) == {}
    assert import_labels(run, export(RunDir(run).run_id())).startswith(f"imported {len(tasks)} answers")


def _annotation(k: int, choice: str | None, stamp: str, cancelled: bool = False) -> dict:
    result = [] if choice is None else [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [choice]}}]
    return {"id": k, "result": result, "was_cancelled": cancelled, "created_at": stamp, "updated_at": stamp}


def _formats(tasks: list[dict], votes: dict[int, list[tuple[str | None, str, bool]]], tmp_path: Path
             ) -> dict[str, Path]:
    """The JSON, JSON-MIN and CSV exports of ``tasks`` whose k-th task got ``votes[k]`` (choice or None for an
    empty submit, time, cancelled), written as Label Studio 1.23 does: JSON-MIN and CSV give one row per
    annotation and leave cancelled ones out."""
    full, rows = [], []
    for k, task in enumerate(tasks):
        data = {**task["data"], "image": STORAGE + task["data"]["path"]}
        anns = [_annotation(100 * k + j, c, t, x) for j, (c, t, x) in enumerate(votes.get(k, []))]
        full.append({"id": k + 1, "data": data, "annotations": anns})
        rows += [{**data, "id": k + 1, "label": a["result"][0]["value"]["choices"][0] if a["result"] else "",
                  "annotator": 1, "annotation_id": a["id"], "created_at": a["created_at"],
                  "updated_at": a["updated_at"], "lead_time": None} for a in anns if not a["was_cancelled"]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, sorted(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (tmp_path / "export.csv").write_text(buf.getvalue())
    return {"json": _write(tmp_path, "export.json", full), "json_min": _write(tmp_path, "export_min.json", rows),
            "csv": tmp_path / "export.csv"}


T1, T2, T3 = "2026-12-07T10:00:00.000001Z", "2026-12-07T11:00:00.000001Z", "2026-12-07T12:00:00.000001Z"


@pytest.mark.parametrize("fmt", ["json", "json_min", "csv"])
@pytest.mark.parametrize("rule", ["agree", "majority", "latest"])
def test_several_annotators_one_rule_for_every_format(run, fmt, rule, tmp_path):
    """Two or three annotators per image, by hand: what each rule takes, the same from every export format;
    an empty submit beside a label never counts; what a rule cannot settle stays open and is named."""
    tasks = _tasks(run)
    votes = {0: [("red", T1, False), ("blue", T2, False)],  # two differ: latest blue, the others open
             1: [("green", T1, False), ("green", T2, False)],  # agree
             2: [("red", T1, False), (None, T2, False)],  # a label and a later empty submit: red
             3: [("red", T1, False), ("blue", T3, False), ("red", T2, False)],  # majority red, latest blue
             4: [("blue", T1, False)]}
    expected = {"agree": {1: "green", 2: "red", 4: "blue"},
                "majority": {1: "green", 2: "red", 3: "red", 4: "blue"},
                "latest": {0: "blue", 1: "green", 2: "red", 3: "blue", 4: "blue"}}[rule]
    path = _formats(tasks, votes, tmp_path)[fmt]
    message = import_labels(run, path, annotators=rule)
    index = [t["data"]["ssal_index"] for t in tasks]
    assert RunDir(run).answers_of(-1) == {index[k]: CLASSES.index(c) for k, c in expected.items()}
    left = [k for k in votes if k not in expected]
    if left:
        assert f"{len(left)} left open, their answers disagree under --annotators {rule}: " in message
        assert all(f"'{tasks[k]['data']['path']}'" in message for k in left)
    else:
        assert "left open" not in message


def test_a_cancelled_annotation_is_a_skip_and_never_erases_a_label_unless_latest_says_so(run, tmp_path):
    tasks = _tasks(run)
    index = [t["data"]["ssal_index"] for t in tasks]
    votes = {0: [("red", T1, False), (None, T2, True)], 1: [(None, T1, True)]}
    path = _formats(tasks, votes, tmp_path)["json"]
    with pytest.raises(DataError, match=re.escape("--annotators agree|majority|latest")):  # the default: it waits
        import_labels(run, path)
    assert "left open" in import_labels(run, path, annotators="agree")
    assert RunDir(run).answers_of(-1) == {index[1]: SKIP}
    import_labels(run, path, annotators="latest")
    assert RunDir(run).answers_of(-1) == {index[0]: SKIP, index[1]: SKIP}


def test_a_later_rounds_export_says_which_model_version_a_reused_project_must_show(run, folder, tmp_path, capsys):
    """Label Studio keeps a project's first model version (seen on 1.23.2): the export of round 0's batch,
    whose tasks carry the model's suggestions as 'ssal rounds/r00', says how to show them."""
    from ssal.cli import main

    _, truth = folder
    import_labels(run, _write(tmp_path, "first.json", _answered(_tasks(run), truth)))
    loop.run(load_recipe(run / "recipe.yaml"), resume=True, progress=False)
    capsys.readouterr()
    assert main(["label", "export", str(run)]) == 0
    out = capsys.readouterr().out
    tasks = json.loads((run / "rounds" / "r00" / "tasks.json").read_text())
    assert {p["model_version"] for t in tasks for p in t["predictions"]} == {"ssal rounds/r00"}
    assert all(0 <= t["predictions"][0]["score"] <= 1 for t in tasks)
    assert """shows them once its model version is 'ssal rounds/r00' (REST: PATCH /api/projects/<id> with \
{"model_version": "ssal rounds/r00"})""" in out


def test_push_and_pull_say_in_one_line_what_is_wrong_before_or_without_a_server(run, tmp_path, capsys, monkeypatch):
    """No token, an address that is not one, a server that is not there: one line each, the run unchanged.
    (A bad token, a missing project and the round trip itself: tests/test_label_studio_server.py.)"""
    from tests.test_human_loop import one_error_line, snapshot, ssal_here

    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    before = snapshot(run)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for args, fragments in [
        (["push", str(run)], ["no Label Studio token", "--token or LABEL_STUDIO_API_KEY"]),
        (["push", str(run), "--token", "t", "--url", "localhost:8080"], ["is not a Label Studio address"]),
        (["push", str(run), "--token", "t", "--url", closed], [f"cannot reach Label Studio at {closed}", "--url"]),
        (["pull", str(run), "--token", "t", "--url", closed], [f"cannot reach Label Studio at {closed}"]),
        (["pull", str(tmp_path / "nowhere"), "--token", "t", "--url", closed], ["nowhere"]),
    ]:
        rc, out, err = ssal_here(capsys, "label", *args)
        assert rc == 2 and out == "", (args, out)
        one_error_line(err, *fragments)
    assert snapshot(run) == before


def test_a_server_that_answers_in_another_shape_is_one_line(run, capsys, monkeypatch):
    """Something answers JSON, but not as Label Studio does: one line, never a KeyError."""
    import http.server
    import threading

    from tests.test_human_loop import one_error_line, snapshot, ssal_here

    class Odd(http.server.BaseHTTPRequestHandler):
        def _json(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._json({"count": 0, "results": []})

        def do_POST(self):  # noqa: N802
            self._json({"weird": True})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        before = snapshot(run)
        rc, out, err = ssal_here(capsys, "label", "push", str(run), "--url", url, "--token", "t")
        assert rc == 2 and out == ""
        one_error_line(err, f"{url} answered in a shape Label Studio does not", "is it Label Studio")
        assert snapshot(run) == before
    finally:
        server.shutdown()
