"""The labeling page against a hostile browser and a hostile file system (issue 33, items 6 and 9, and two
servers on one run).

- Every request that changes something (POST /api/answer, POST /api/continue) must come from the page
  itself: it carries the page's token (``<meta name="ssal-token">`` of GET /, sent as ``X-SSAL-Token``), no
  other site's Origin (nor, without an Origin, another site's Referer), and is ``application/json``. A
  refused request is one JSON line, changes nothing on disk and starts no run.
- An image is served only while its recorded path, links resolved, stays under data.root, the file still
  holds the bytes that were queried (selected.json "digests"), and it decodes; its content type is the
  decoded format, with ``X-Content-Type-Options: nosniff``. ``ssal label serve`` refuses to start on a batch
  whose image changed.
- Two servers on one run: an answer waits for the other's transaction instead of failing, and the lock file
  is gone when nobody holds the run.

One human run (72 colour images, every 4th a PNG saved under a .jpg name) is made per module; tests copy
it. Tests that swap an image of data.root put the original back when they end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from ssal.cli import main
from ssal.label.serve import Session, create_app
from ssal.run.store import RunDir
from tests.test_human_loop import (  # noqa: F401  (one_thread: autouse, in-process work on one thread)
    CLASSES,
    colour_image,
    folder_recipe,
    one_error_line,
    one_thread,
)

N_POOL, N_QUERIES = 72, 24
HOST = "127.0.0.1:8765"  # what the test client sends as Host: the page's own origin is http://127.0.0.1:8765
OWN = f"http://{HOST}"
EVIL = "http://evil.example"


# ----------------------------------------------------------------------------- the run

@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict:
    """72 16x16 colour images under data.root, flat and nested; every 4th is a PNG saved under a .jpg name.
    ``elsewhere`` is a folder next to data.root (outside it). truth: {relative path: class}."""
    tmp = tmp_path_factory.mktemp("hostile_page")
    root = tmp / "photos"
    rng = np.random.default_rng(33)
    truth, fake_jpg = {}, set()
    for i in range(N_POOL):
        c = int(rng.integers(0, 3))
        ext = "jpg" if i % 4 == 2 else "png"
        rel = Path(["", "2024", "2024/trip"][i % 3]) / f"img_{i:03d}.{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour_image(rng, c)).save(root / rel, format="PNG")  # .jpg: a PNG all the same
        truth[rel.as_posix()] = CLASSES[c]
        if ext == "jpg":
            fake_jpg.add(rel.as_posix())
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"tmp": tmp, "root": root, "truth": truth, "fake_jpg": fake_jpg, "elsewhere": elsewhere}


@pytest.fixture(scope="module")
def base_run(pool) -> Path:
    """A human run stopped at its initial batch of 24 queries (never written to: tests copy it)."""
    recipe = folder_recipe(pool["tmp"], pool["root"], "hostile", model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"initial": N_QUERIES, "budget": 6, "rounds": 2})
    assert main(["run", str(recipe), "--no-progress"]) == 0
    run = pool["tmp"] / "runs" / "hostile"
    assert (run / "rounds" / "initial" / "queries.csv").is_file()
    return run


@pytest.fixture(scope="module")
def complete_run(base_run, pool, tmp_path_factory) -> Path:
    """The same run with every image of its batch answered (the truth, by ``ssal label import``): a run the
    page may continue."""
    run = shutil.copytree(base_run, tmp_path_factory.mktemp("complete") / "run", symlinks=True)
    csv = run.parent / "answers.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{pool['truth'][p]}\n" for p in selected(run)["paths"]))
    assert main(["label", "import", str(run), str(csv)]) == 0
    assert len(RunDir(run).read_answers(-1)) == N_QUERIES
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    return shutil.copytree(base_run, tmp_path / "run", symlinks=True)


@pytest.fixture
def done_run(complete_run, tmp_path) -> Path:
    return shutil.copytree(complete_run, tmp_path / "done", symlinks=True)


@pytest.fixture
def sessions():
    """Sessions made by a test; a run one of them started (the old code did) is stopped when it ends."""
    made: list[Session] = []
    yield made
    for s in made:
        s.close()


def selected(run: Path) -> dict:
    return json.loads((run / "rounds" / "initial" / "selected.json").read_text())


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every folder, file and link under ``roots`` (lock file included): path -> what it is."""
    out: dict[str, tuple] = {}
    for root in roots:
        for p in [root, *sorted(root.rglob("*"))]:
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir",)
            else:
                out[str(p)] = ("file", p.read_bytes())
    return out


def app_client(session: Session) -> TestClient:
    """A client of the page's app that sends only what a test gives it (no token): Host 127.0.0.1:8765."""
    return TestClient(create_app(session, ["127.0.0.1", "localhost"]), base_url=OWN, raise_server_exceptions=False)


def token_of(c: TestClient) -> str:
    """The token the page carries ('' when it carries none)."""
    m = re.search(rb'<meta name="ssal-token" content="([^"]+)">', c.get("/").content)
    return m.group(1).decode() if m else ""


def one_json_line(r, status: int, *fragments: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error, str) and error.strip() and "\n" not in error and "Traceback" not in error, error
    for f in fragments:
        assert f in error, f"{f!r} not in {error!r}"
    return error


# ----------------------------------------------------------------------------- 6. cross-site requests

def multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "----ssalhostile7MA4YWxkTrZu0gW"
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                   for k, v in fields.items()) + f"--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


def answer_fields(index: int) -> dict[str, str]:
    return {"round": "-1", "index": str(index), "label": "red"}


def json_payload(route: str, index: int) -> bytes:
    return b"{}" if route == "/api/continue" else json.dumps({"round": -1, "index": index, "label": "red"}).encode()


# A cross-site page can send these without a preflight (a form, text/plain, multipart) and never with the
# page's token: 403. Had it the token, the media type alone is still refused: 415.
# (name, body and content type as a function of (route, queried index))
SIMPLE_BODIES = [
    ("a form post", lambda route, i: ("&".join(f"{k}={v}" for k, v in answer_fields(i).items()).encode(),
                                      "application/x-www-form-urlencoded")),
    ("text/plain carrying JSON", lambda route, i: (json_payload(route, i), "text/plain")),
    ("text/plain with a charset", lambda route, i: (json_payload(route, i), "text/plain; charset=utf-8")),
    ("multipart", lambda route, i: multipart(answer_fields(i))),
    ("no content type", lambda route, i: (json_payload(route, i), None)),
]

# JSON that is refused for where it comes from: (name, headers as a function of the page's token,
# whether the refusal is for the token (and says the page may re-read it))
FOREIGN_JSON = [
    ("without the token", lambda token: {}, True),
    ("with a wrong token", lambda token: {"X-SSAL-Token": token[:-1] + ("A" if token[-1:] != "A" else "B")}, True),
    ("with an empty token", lambda token: {"X-SSAL-Token": ""}, True),
    ("with a token of non-ASCII bytes", lambda token: {"X-SSAL-Token": ("\xe9" + token).encode("latin-1")}, True),
    ("with the token and an Origin of another site", lambda token: {"X-SSAL-Token": token, "Origin": EVIL}, False),
    ("with the token and Origin null", lambda token: {"X-SSAL-Token": token, "Origin": "null"}, False),
    ("with the token and the Origin of another port of 127.0.0.1",
     lambda token: {"X-SSAL-Token": token, "Origin": "http://127.0.0.1:8766"}, False),
    ("with the token and an https Origin of the same host",
     lambda token: {"X-SSAL-Token": token, "Origin": f"https://{HOST}"}, False),
    ("with the token and the Origin of the same port under another name",
     lambda token: {"X-SSAL-Token": token, "Origin": "http://localhost:8765"}, False),
    ("with the token and a foreign Referer without Origin",
     lambda token: {"X-SSAL-Token": token, "Referer": f"{EVIL}/labels.html"}, False),
    ("with the token and a Referer of another port without Origin",
     lambda token: {"X-SSAL-Token": token, "Referer": "http://127.0.0.1:8766/"}, False),
    ("with the token, a foreign Origin and the page's own Referer",
     lambda token: {"X-SSAL-Token": token, "Origin": EVIL, "Referer": f"{OWN}/"}, False),
]

ROUTES = ["/api/answer", "/api/continue"]


def assert_nothing_happened(run: Path, before: dict, session: Session, answers_before: dict) -> None:
    assert snapshot(run) == before
    assert session.job is None
    assert RunDir(run).read_answers(-1) == answers_before


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("make", [c[1] for c in SIMPLE_BODIES], ids=[c[0] for c in SIMPLE_BODIES])
def test_a_body_a_cross_site_page_can_send_is_refused_403_without_the_token_and_415_with_it(
        done_run, sessions, route, make):
    """On a complete batch the old page started the next round for a form post from any site."""
    session = Session(done_run, allow_continue=True)
    sessions.append(session)
    c = app_client(session)
    index = selected(done_run)["indices"][0]
    answers = RunDir(done_run).read_answers(-1)
    content, ctype = make(route, index)
    headers = {} if ctype is None else {"content-type": ctype}
    before = snapshot(done_run)

    r = c.post(route, content=content, headers={**headers, "Origin": EVIL})  # what the other site's page sends
    one_json_line(r, 403, "token")
    assert r.headers.get("x-ssal-stale-token") == "1"
    assert_nothing_happened(done_run, before, session, answers)

    r = c.post(route, content=content, headers={**headers, "X-SSAL-Token": token_of(c)})
    one_json_line(r, 415, "application/json")
    assert_nothing_happened(done_run, before, session, answers)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("make, stale", [c[1:] for c in FOREIGN_JSON], ids=[c[0] for c in FOREIGN_JSON])
def test_json_that_does_not_come_from_the_page_itself_is_refused_with_403_and_changes_nothing(
        run, done_run, sessions, route, make, stale):
    """/api/answer on an open batch (the old page stored the answer), /api/continue on a complete one (the
    old page started the next round)."""
    target = run if route == "/api/answer" else done_run
    session = Session(target, allow_continue=True)
    sessions.append(session)
    c = app_client(session)
    index = selected(target)["indices"][0]
    answers = RunDir(target).read_answers(-1)
    before = snapshot(target)

    r = c.post(route, content=json_payload(route, index),
               headers={"content-type": "application/json", **make(token_of(c))})
    error = one_json_line(r, 403)
    if stale:  # the page of a restarted server re-reads its token when told so
        assert "token" in error and r.headers.get("x-ssal-stale-token") == "1", (error, dict(r.headers))
    else:
        assert "another site" in error, error
    assert_nothing_happened(target, before, session, answers)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("referer", ["http://[evil.example/labels.html", "http://[::1/", "http://evil.example:port/"])
def test_a_referer_that_is_not_a_url_is_refused_with_one_json_line_not_a_server_error(
        run, done_run, sessions, route, referer):
    """Without an Origin the Referer says where a request comes from; one that does not parse is not the
    page's own (a 4xx and one JSON line, never a 500 with a traceback)."""
    target = run if route == "/api/answer" else done_run
    session = Session(target, allow_continue=True)
    sessions.append(session)
    c = app_client(session)
    answers = RunDir(target).read_answers(-1)
    before = snapshot(target)
    r = c.post(route, content=json_payload(route, selected(target)["indices"][0]),
               headers={"content-type": "application/json", "X-SSAL-Token": token_of(c), "Referer": referer})
    assert r.status_code in (400, 403), (r.status_code, r.text[:200])
    one_json_line(r, r.status_code)
    assert_nothing_happened(target, before, session, answers)


def test_the_token_of_another_server_on_the_same_run_is_refused(run, sessions):
    """Each server has its own token: a page of a server that was restarted (or of a second one) cannot
    write through this one until it re-reads the token."""
    mine, theirs = Session(run), Session(run)
    sessions.extend([mine, theirs])
    c, other = app_client(mine), app_client(theirs)
    other_token = token_of(other)
    index = selected(run)["indices"][0]
    before = snapshot(run)
    r = c.post("/api/answer", content=json_payload("/api/answer", index),
               headers={"content-type": "application/json", "X-SSAL-Token": other_token})
    one_json_line(r, 403, "token")
    assert r.headers.get("x-ssal-stale-token") == "1"
    assert snapshot(run) == before and RunDir(run).read_answers(-1) == {}
    assert token_of(c) != other_token


def test_an_answer_with_the_pages_token_from_its_own_origin_is_stored_and_one_without_is_not(run, pool, sessions):
    """The positive control: what the page sends (its token, with its own Origin, its own Referer alone, or
    neither header) is stored, each answer exactly as given."""
    session = Session(run)
    sessions.append(session)
    c = app_client(session)
    sel = selected(run)
    first, second, third, fourth = sel["indices"][:4]
    truth = {i: pool["truth"][p] for i, p in zip(sel["indices"], sel["paths"], strict=True)}
    one_json_line(c.post("/api/answer", content=json_payload("/api/answer", first),
                         headers={"content-type": "application/json", "Origin": OWN}), 403)
    assert RunDir(run).read_answers(-1) == {}
    token = token_of(c)
    assert token, "the page carries no token"

    for index, extra in ((first, {"Origin": OWN}), (second, {"Referer": f"{OWN}/"}), (third, {}),
                         (fourth, {"Origin": OWN, "Referer": f"{OWN}/#grid"})):
        r = c.post("/api/answer", content=json.dumps({"round": -1, "index": index, "label": truth[index]}).encode(),
                   headers={"content-type": "application/json; charset=utf-8", "X-SSAL-Token": token, **extra})
        assert r.status_code == 200, (extra, r.status_code, r.text)
    want = {i: CLASSES.index(truth[i]) for i in (first, second, third, fourth)}
    assert RunDir(run).read_answers(-1) == want


@pytest.mark.parametrize("body", [b'{"go": true}', b"[]", b"null", b'""', b"{"], ids=["an object", "a list", "null",
                                                                                      "a string", "malformed"])
def test_continue_with_the_token_takes_only_an_empty_json_object(done_run, sessions, body):
    session = Session(done_run, allow_continue=True)
    sessions.append(session)
    c = app_client(session)
    before = snapshot(done_run)
    r = c.post("/api/continue", content=body,
               headers={"content-type": "application/json", "X-SSAL-Token": token_of(c), "Origin": OWN})
    one_json_line(r, 400)
    assert_nothing_happened(done_run, before, session, RunDir(done_run).read_answers(-1))


def test_continue_from_the_page_itself_starts_the_next_round_and_a_foreign_one_before_it_did_not(done_run,
                                                                                                 sessions):
    """The positive control of /api/continue: the refusals above are for where the request comes from."""
    session = Session(done_run, allow_continue=True)
    sessions.append(session)
    c = app_client(session)
    token = token_of(c)
    r = c.post("/api/continue", content=b"{}", headers={"content-type": "text/plain", "Origin": EVIL})
    one_json_line(r, 403)
    assert session.job is None
    r = c.post("/api/continue", content=b"{}",
               headers={"content-type": "application/json", "X-SSAL-Token": token, "Origin": OWN})
    assert r.status_code == 200 and r.json() == {"started": True}, r.text
    assert session.job is not None
    session.close()  # SIGTERM: the round stops cleanly


# ----------------------------------------------------------------------------- 9. the images the page serves

@contextlib.contextmanager
def swapped(pool: dict, rel: str):
    """Move data.root/rel aside (outside data.root) for the block; put it back after, whatever the block
    left at its place."""
    path = pool["root"] / rel
    aside = Path(tempfile.mkdtemp(dir=pool["tmp"])) / "original"
    os.rename(path, aside)
    try:
        yield path
    finally:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):  # a file, a link, a named pipe
            os.unlink(path)
        os.rename(aside, path)


def a_queried(run: Path, pool: dict, fake_jpg: bool = False, nested: bool = False) -> tuple[int, str]:
    sel = selected(run)
    for i, p in zip(sel["indices"], sel["paths"], strict=True):
        if (p in pool["fake_jpg"]) == fake_jpg and (("/" in p) == nested):
            return i, p
    raise AssertionError(f"the batch has no {'fake .jpg' if fake_jpg else 'png'} image (nested={nested})")


def other_image(pool: dict, rel: str) -> str:
    return next(p for p in sorted(pool["truth"]) if p != rel and p not in pool["fake_jpg"])


def expect_refused(c: TestClient, index: int, statuses: tuple[int, ...], foreign: list[bytes]) -> str:
    r = c.get(f"/api/image/{index}")
    assert r.status_code in statuses, (r.status_code, r.headers.get("content-type"), r.content[:80])
    error = one_json_line(r, r.status_code)
    for b in foreign:
        assert b not in r.content, "the page sent the bytes the path names now"
    return error


# (name, what replaces the queried PNG as a function of (pool, its path, its original bytes, the place),
#  allowed statuses, the bytes that must never be sent)
REPLACEMENTS = [
    ("a link to an identical copy outside data.root",
     lambda pool, rel, data, place: _link_to_copy(pool, rel, data, place, relative=False), (404,)),
    ("a relative link with .. to an identical copy outside data.root",
     lambda pool, rel, data, place: _link_to_copy(pool, rel, data, place, relative=True), (404,)),
    ("a link to /etc/passwd", lambda pool, rel, data, place: (place.symlink_to("/etc/passwd"),
                                                             [Path("/etc/passwd").read_bytes()[:40]])[1], (404,)),
    ("a file with other pixels under the same name", lambda pool, rel, data, place: _other_pixels(place), (409,)),
    ("a text file under the same name", lambda pool, rel, data, place: _text(place), (409,)),
    ("a link to another image of the pool under data.root",
     lambda pool, rel, data, place: _link_to_other(pool, rel, place), (409,)),
]


def _link_to_copy(pool: dict, rel: str, data: bytes, place: Path, relative: bool) -> list[bytes]:
    copy = pool["elsewhere"] / f"copy_of_{Path(rel).name}"
    copy.write_bytes(data)
    place.symlink_to(os.path.relpath(copy, place.parent) if relative else copy)
    assert place.read_bytes() == data  # the same bytes the run queried, but not a file of data.root
    return [data]


def _other_pixels(place: Path) -> list[bytes]:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 77, np.uint8)).save(buf, format="PNG")
    place.write_bytes(buf.getvalue())
    return [buf.getvalue()]


def _text(place: Path) -> list[bytes]:
    text = b"not an image: hostile-marker-5d1c\n"
    place.write_bytes(text)
    return [text]


def _link_to_other(pool: dict, rel: str, place: Path) -> list[bytes]:
    other = pool["root"] / other_image(pool, rel)
    place.symlink_to(other)
    return [other.read_bytes()]


@pytest.mark.parametrize("replace, statuses", [c[1:] for c in REPLACEMENTS], ids=[c[0] for c in REPLACEMENTS])
def test_a_queried_image_replaced_after_the_stop_is_never_streamed(run, pool, sessions, replace, statuses):
    index, rel = a_queried(run, pool)
    session = Session(run)
    sessions.append(session)
    c = app_client(session)
    original = (pool["root"] / rel).read_bytes()
    assert c.get(f"/api/image/{index}").content == original  # served before the swap
    before = snapshot(run)
    with swapped(pool, rel) as place:
        foreign = replace(pool, rel, original, place)
        expect_refused(c, index, statuses, foreign)
        # a fresh page (no cached items) refuses it as well
        fresh = Session(run)
        sessions.append(fresh)
        expect_refused(app_client(fresh), index, statuses, foreign)
    assert snapshot(run) == before
    assert c.get(f"/api/image/{index}").content == original  # the original back: served again


def test_a_folder_of_data_root_replaced_by_a_link_to_an_identical_copy_outside_it_serves_none_of_its_images(
        run, pool, sessions):
    """Another link shape: not the file but its folder leads out of data.root."""
    index, rel = a_queried(run, pool, nested=True)
    folder = Path(rel).parent.as_posix()
    session = Session(run)
    sessions.append(session)
    c = app_client(session)
    original = (pool["root"] / rel).read_bytes()
    copy = pool["elsewhere"] / "folder_copy"
    shutil.copytree(pool["root"] / folder, copy)
    with swapped(pool, folder) as place:
        place.symlink_to(copy, target_is_directory=True)
        assert (pool["root"] / rel).read_bytes() == original
        expect_refused(c, index, (404,), [original])
    assert c.get(f"/api/image/{index}").content == original


def test_a_queried_image_replaced_by_a_fifo_under_data_root_is_refused_without_hanging_the_page(run, pool, sessions):
    """A named pipe holds no image: reading it would wait for a writer that never comes."""
    index, rel = a_queried(run, pool)
    session = Session(run)
    sessions.append(session)
    c = app_client(session)
    got: list = []
    with swapped(pool, rel) as place:
        os.mkfifo(place)
        t = threading.Thread(target=lambda: got.append(c.get(f"/api/image/{index}")), daemon=True)
        t.start()
        t.join(5)
        hung = t.is_alive()
        if hung:  # let the reader see an end of file, so that no thread is left waiting
            fd = os.open(place, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            t.join(10)
        assert not hung, "the page waited on a named pipe in place of the image"
    assert got and got[0].status_code in (404, 409), got[0].status_code if got else None
    one_json_line(got[0], got[0].status_code)


def test_an_image_is_sent_with_the_type_of_its_decoded_format_and_nosniff_whatever_its_name(run, pool, sessions):
    """(e): a PNG saved under a .jpg name when it was queried is sent as image/png; every image carries
    X-Content-Type-Options: nosniff."""
    jpg_index, jpg_rel = a_queried(run, pool, fake_jpg=True)
    png_index, png_rel = a_queried(run, pool)
    session = Session(run)
    sessions.append(session)
    c = app_client(session)
    for index, rel in ((jpg_index, jpg_rel), (png_index, png_rel)):
        data = (pool["root"] / rel).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"  # the truth, whatever the name says
        r = c.get(f"/api/image/{index}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png", (rel, r.headers["content-type"])
        assert r.headers.get("x-content-type-options") == "nosniff", (rel, dict(r.headers))
        assert r.content == data


@pytest.mark.parametrize("change", ["other pixels", "a text file", "a link to another pool image"])
def test_serve_refuses_to_start_when_an_image_of_the_open_batch_changed(run, pool, capsys, monkeypatch, change):
    import uvicorn

    def started(*args, **kwargs):
        raise AssertionError("the labeling page started on a batch whose image changed")

    monkeypatch.setattr(uvicorn.Server, "run", started)
    index, rel = a_queried(run, pool)
    before = snapshot(run)
    with swapped(pool, rel) as place:
        if change == "other pixels":
            _other_pixels(place)
        elif change == "a text file":
            _text(place)
        else:
            _link_to_other(pool, rel, place)
        before_root = snapshot(pool["root"])
        capsys.readouterr()
        rc = main(["label", "serve", str(run), "--port", "0"])
        out, err = capsys.readouterr()
        assert rc == 2, (rc, out, err)
        one_error_line(err, rel)
        assert "labeling" not in out
        assert snapshot(pool["root"]) == before_root
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- two transactions, one run

def test_an_answer_waits_for_another_transaction_holding_the_lock_and_the_lock_file_is_gone_after(run, sessions):
    session = Session(run)
    sessions.append(session)
    c = app_client(session)
    token = token_of(c)
    index = selected(run)["indices"][0]
    other = RunDir(run)  # another open file of .answers.lock: flock says held, as for another server's transaction
    other.lock(purpose="answers")
    held = (run / ".answers.lock").read_text()
    assert f'"pid": {os.getpid()}' in held, held  # the lock file names its holder while held
    timer = threading.Timer(1.0, lambda: other.unlock("answers"))
    timer.start()
    try:
        t0 = time.monotonic()
        r = c.post("/api/answer", content=json.dumps({"round": -1, "index": index, "label": "green"}).encode(),
                   headers={"content-type": "application/json", "X-SSAL-Token": token})
        waited = time.monotonic() - t0
    finally:
        timer.join()
    assert r.status_code == 200, r.text
    assert waited >= 0.9, waited  # it waited for the holder rather than writing under its lock
    assert RunDir(run).read_answers(-1) == {index: CLASSES.index("green")}
    assert not os.path.lexists(run / ".answers.lock"), "the lock file outlives its holders"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Page:
    """``python -m ssal label serve RUN --port 0`` in a child process; its port from its startup line."""

    def __init__(self, run: Path):
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "ssal", "label", "serve", str(run), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=_env())
        self.port = None

    def ready(self) -> Page:
        while self.port is None:
            line = self.proc.stdout.readline()
            if not line:
                self.err.seek(0)
                raise AssertionError(f"the server exited: {self.err.read().decode(errors='replace')[-2000:]}")
            m = re.search(r" at http://\S+:(\d+)/ \(Ctrl-C to stop\)$", line.rstrip("\n"))
            if m:
                self.port = int(m.group(1))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # never block on a full pipe
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/")
        page = conn.getresponse().read()
        conn.close()
        m = re.search(rb'<meta name="ssal-token" content="([^"]+)">', page)
        self.token = m.group(1).decode() if m else ""
        return self

    def answer(self, index: int, label: str) -> tuple[int, str]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/api/answer", body=json.dumps({"round": -1, "index": index, "label": label}),
                         headers={"Content-Type": "application/json", "X-SSAL-Token": self.token,
                                  "Origin": f"http://127.0.0.1:{self.port}"})
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.mark.slow  # two server processes
def test_two_servers_on_one_run_store_all_24_answers_given_at_the_same_time_and_leave_no_lock_file(run, pool):
    sel = selected(run)
    truth = {i: pool["truth"][p] for i, p in zip(sel["indices"], sel["paths"], strict=True)}
    pages = [Page(run), Page(run)]
    try:
        for p in pages:
            p.ready()
        barrier = threading.Barrier(N_QUERIES)
        results: dict[int, tuple[int, str]] = {}

        def give(k: int, index: int) -> None:
            barrier.wait(30)
            results[index] = pages[k % 2].answer(index, truth[index])

        threads = [threading.Thread(target=give, args=(k, i)) for k, i in enumerate(sel["indices"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        refused = {i: r for i, r in results.items() if r[0] != 200}
        assert len(results) == N_QUERIES and not refused, refused
        assert RunDir(run).read_answers(-1) == {i: CLASSES.index(y) for i, y in truth.items()}
    finally:
        codes = [p.stop() for p in pages]
    assert codes == [0, 0], codes
    assert not list(run.rglob(".lock")), "a lock file is left in the run after both servers stopped"
