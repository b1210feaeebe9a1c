"""``ssal label serve`` over HTTP: the labeling page's endpoints, their refusals, the files they may
serve and the answers they store.

One human run is made per module (a folder of 80 colour images: PNGs, TIFFs and PNGs that are links
to files outside data.root, plus a secret text file next to them); every test that writes works on a
copy. In-process tests use Starlette's TestClient on :func:`ssal.label.serve.create_app`; the ones about
the real server (raw paths, kill -9, threads, signals) start ``python -m ssal label serve``. The
answers given are checked against the hidden truth of the images, the run's answers.json (read
with RunDir), and pool.json after ``ssal run --resume``."""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from ssal.cli import main
from ssal.errors import SsalError
from ssal.label.serve import MAX_BODY, Session, create_app
from ssal.run.store import RunDir
from tests.test_human_loop import (  # noqa: F401  (one_thread: autouse, in-process training on one thread)
    CLASSES,
    colour_image,
    folder_recipe,
    one_error_line,
    one_thread,
    snapshot,
    ssal,
)

N_POOL, N_QUERIES = 80, 24
SECRET = b"secret-token-7f3a9c: never served\n"


# ----------------------------------------------------------------------------- the run

@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict:
    """80 16x16 colour images under data.root (flat and nested): every 4th a TIFF, every 4th a PNG that is
    a symbolic link to a file in a hidden folder of data.root; secret.txt next to them. truth: {relative
    path: class}."""
    tmp = tmp_path_factory.mktemp("label_page")
    root = tmp / "photos"
    elsewhere = root / ".store"  # not walked itself (hidden), reached through the links only
    elsewhere.mkdir(parents=True)
    rng = np.random.default_rng(7)
    truth, kinds = {}, {}
    for i in range(N_POOL):
        c = int(rng.integers(0, 3))
        kind = ("png", "tif", "link", "png")[i % 4]
        rel = Path(["", "2024", "2024/trip"][i % 3]) / f"img_{i:03d}.{'tif' if kind == 'tif' else 'png'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(colour_image(rng, c))
        if kind == "link":
            im.save(elsewhere / f"img_{i:03d}.png")
            (root / rel).symlink_to(elsewhere / f"img_{i:03d}.png")
        else:
            im.save(root / rel)
        truth[rel.as_posix()] = CLASSES[c]
        kinds[rel.as_posix()] = kind
    (root / "secret.txt").write_bytes(SECRET)
    return {"tmp": tmp, "root": root, "truth": truth, "kinds": kinds, "order": sorted(truth)}


@pytest.fixture(scope="module")
def base_run(pool) -> Path:
    """A human run stopped at its initial batch of 24 queries (never written to: tests copy it)."""
    recipe = folder_recipe(pool["tmp"], pool["root"], "served", model={"backbone": "cnn_small"}, train={"steps": 3},
                           active={"initial": N_QUERIES, "budget": 6, "rounds": 2})
    assert main(["run", str(recipe), "--no-progress"]) == 0  # in this process: torch is imported already
    run = pool["tmp"] / "runs" / "served"
    assert (run / "rounds" / "initial" / "queries.csv").is_file()
    return run


def copy_run(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, symlinks=True)
    return dest


def selected(run: Path, folder: str = "initial") -> dict:
    return json.loads((run / "rounds" / folder / "selected.json").read_text())


def page_token(html: bytes) -> str:
    """The token the page carries (and sends with every request that changes something)."""
    return re.search(rb'<meta name="ssal-token" content="([^"]+)">', html).group(1).decode()


def client(run: Path, **kw) -> TestClient:
    """A client of the page's app that sends what the page sends: its token (read from the page)."""
    c = TestClient(create_app(Session(run, **kw), ["testserver"]), raise_server_exceptions=False)
    c.headers["X-SSAL-Token"] = page_token(c.get("/").content)
    return c


def one_line_error(response, status: int, *fragments: str) -> str:
    """The response is ``status`` with a JSON body {"error": one line} (no traceback)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error, str) and error.strip() and "\n" not in error and "\r" not in error, error
    assert "Traceback" not in error, error
    for f in fragments:
        assert f in error, f"{f!r} not in {error!r}"
    return error


def post(c: TestClient, body, content_type: str | None = "application/json", raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {} if content_type is None else {"content-type": content_type}
    return c.post("/api/answer", content=data, headers=headers)


def class_of(name: str) -> int:
    return -1 if name == "skip" else CLASSES.index(name)


# ----------------------------------------------------------------------------- a real server

def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Server:
    """``python -m ssal label serve RUN --port 0 ARGS`` in a child process; its URL from its startup line."""

    def __init__(self, run: Path, *args: str, port: str = "0", wait: bool = True):
        self.err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on it
        self.proc = subprocess.Popen([sys.executable, "-m", "ssal", "label", "serve", str(run), "--port", port, *args],
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=_env())
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.before: list[str] = []  # lines printed before the labeling line (warnings)
        self.first = None
        if wait:
            self.ready()

    def ready(self) -> Server:
        """Wait for the startup line; its URL and port."""
        while self.first is None:
            line = self.next_line(60)
            if line is None:
                self.proc.wait(10)
                raise AssertionError(f"the server exited ({self.proc.returncode}): {self.stderr()[-3000:]}")
            m = re.search(r" at (http://(\S+):(\d+)/) \(Ctrl-C to stop\)$", line)
            if m:
                self.first = line
                self.url, self.port = m.group(1), int(m.group(3))
                answered = re.search(r"\((\d+)(?: of (\d+))? answered\)", line)
                assert answered, line
                self.answered = int(answered.group(1))
            else:
                self.before.append(line)
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"the server printed nothing for {timeout} s") from None

    def request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        if method == "POST" and not hasattr(self, "token"):  # what the page sends: read it from the page
            self.token = page_token(self.request("GET", "/")[2])
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            if method == "POST":
                hdrs["X-SSAL-Token"] = self.token
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def batch(self) -> dict:
        status, _, body = self.request("GET", "/api/batch")
        assert status == 200, body
        return json.loads(body)

    def answer(self, round_: int, index: int, label) -> tuple[int, dict]:
        status, _, body = self.request("POST", "/api/answer", {"round": round_, "index": index, "label": label})
        return status, json.loads(body)

    def stop(self, sig=signal.SIGINT) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not stop on signal {sig}") from None
        err = self.stderr()
        self.reader.join(10)  # every line of stdout read
        return self.proc.returncode, "".join(self.stdout), err

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def served_early(base_run, pool):
    """One real server for the module, on a copy of the run (the traversal and threads tests), started
    with the first test: it imports while the in-process tests run."""
    run = copy_run(base_run, pool["tmp"] / "served_copy")
    server = Server(run, wait=False)
    yield server, run
    server.kill()


@pytest.fixture
def served(served_early) -> tuple[Server, Path]:
    server, run = served_early
    return server.ready(), run


@pytest.fixture
def run(base_run, served_early, tmp_path) -> Path:
    return copy_run(base_run, tmp_path / "run")


def raw_request(port: int, target: bytes, host: bytes | None = None) -> tuple[int, bytes]:
    """``GET target`` sent as raw bytes (no client normalises the path): (status, whole response)."""
    host = host or f"127.0.0.1:{port}".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            got = s.recv(65536)
            if not got:
                break
            chunks.append(got)
    response = b"".join(chunks)
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    assert m, response[:200]
    return int(m.group(1)), response


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in response else b""


# ----------------------------------------------------------------------------- 1. every bad request

def _first_not_queried(b: dict) -> int:
    return next(i for i in range(N_POOL) if i not in b["indices"])


# (name, request as a function of {round, index (a queried one), indices}, status, fragments of the reason)
BAD_ANSWERS = [
    ("malformed JSON", lambda b: dict(raw=b'{"round": -1, "index": '), 400, ["malformed JSON"]),
    ("not UTF-8", lambda b: dict(raw=b'{"round": -1, "index": 1, "label": "\xff"}'), 400, ["malformed JSON"]),
    ("empty body", lambda b: dict(raw=b""), 400, ["malformed JSON"]),
    ("a list", lambda b: dict(body=[b["round"], b["index"], "red"]), 400, ["JSON object"]),
    ("a string", lambda b: dict(body="red"), 400, ["JSON object"]),
    ("null", lambda b: dict(body=None), 400, ["JSON object"]),
    ("no label key", lambda b: dict(body={"round": b["round"], "index": b["index"]}), 400, ["JSON object"]),
    ("no round", lambda b: dict(body={"index": b["index"], "label": "red"}), 400, ["JSON object"]),
    ("an extra key", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": "red", "x": 1}), 400,
     ["JSON object"]),
    ("bool index", lambda b: dict(body={"round": b["round"], "index": True, "label": "red"}), 400, ["whole numbers"]),
    ("float index", lambda b: dict(body={"round": b["round"], "index": float(b["index"]), "label": "red"}), 400,
     ["whole numbers"]),
    ("string index", lambda b: dict(body={"round": b["round"], "index": str(b["index"]), "label": "red"}), 400,
     ["whole numbers"]),
    ("bool round", lambda b: dict(body={"round": False, "index": b["index"], "label": "red"}), 400, ["whole numbers"]),
    ("float round", lambda b: dict(body={"round": -1.0, "index": b["index"], "label": "red"}), 400, ["whole numbers"]),
    ("NaN index", lambda b: dict(raw=b'{"round": -1, "index": NaN, "label": "red"}'), 400, ["whole numbers"]),
    ("number label", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": 0}), 400,
     ["label must be"]),
    ("list label", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": ["red"]}), 400,
     ["label must be"]),
    ("bool label", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": True}), 400,
     ["label must be"]),
    ("empty label", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": "  "}), 400,
     ["empty label"]),
    ("unknown class", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": "rde"}), 400,
     ["unknown class 'rde'", "did you mean 'red'"]),
    ("unknown class, other case", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": "GREEN"}),
     400, ["did you mean 'green'"]),
    ("index in the pool, not queried", lambda b: dict(body={"round": b["round"], "index": _first_not_queried(b),
                                                            "label": "red"}), 400, ["is not one of the 24 images"]),
    ("index past the pool", lambda b: dict(body={"round": b["round"], "index": N_POOL, "label": "red"}), 404, []),
    ("negative index", lambda b: dict(body={"round": b["round"], "index": -1, "label": "red"}), 404, []),
    ("huge index", lambda b: dict(body={"round": b["round"], "index": 10 ** 30, "label": "red"}), 404, []),
    ("the next round", lambda b: dict(body={"round": b["round"] + 1, "index": b["index"], "label": "red"}), 409,
     ["rounds/initial", "reload"]),
    ("an older round", lambda b: dict(body={"round": b["round"] - 1, "index": b["index"], "label": "red"}), 409,
     ["rounds/initial"]),
    ("text/plain", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": "red"},
                                  content_type="text/plain"), 415, ["application/json"]),
    ("a form", lambda b: dict(raw=f"round={b['round']}&index={b['index']}&label=red".encode(),
                              content_type="application/x-www-form-urlencoded"), 415, ["application/json"]),
    ("no content type", lambda b: dict(body={"round": b["round"], "index": b["index"], "label": "red"},
                                       content_type=None), 415, []),
    ("a body over 64 KiB", lambda b: dict(raw=json.dumps({"round": b["round"], "index": b["index"], "label": "red"})
                                          .encode().ljust(MAX_BODY + 1)), 413, ["over", str(MAX_BODY)]),
]


@pytest.mark.parametrize("make, status, fragments", [c[1:] for c in BAD_ANSWERS], ids=[c[0] for c in BAD_ANSWERS])
def test_a_bad_answer_gets_its_status_and_one_json_line_and_changes_nothing_on_disk(run, make, status, fragments):
    sel = selected(run)
    c = client(run)
    request = make({"round": -1, "index": sel["indices"][0], "indices": sel["indices"]})
    before = snapshot(run)
    r = post(c, request.get("body"), request.get("content_type", "application/json"), request.get("raw"))
    one_line_error(r, status, *fragments)
    assert snapshot(run) == before
    assert RunDir(run).read_answers(-1) == {}
    assert c.get("/api/batch").json()["answers"] == {}


BAD_IMAGES = [
    ("a pool image not in the batch", lambda b: f"/api/image/{_first_not_queried(b)}",
     "not an image of the open batch"),
    ("past the pool", lambda b: f"/api/image/{N_POOL}", ""),
    ("not a number", lambda b: "/api/image/abc", "whole number"),
    ("negative", lambda b: "/api/image/-1", "whole number"),
    ("a float", lambda b: f"/api/image/{b['index']}.0", "whole number"),
    ("an exponent", lambda b: "/api/image/1e3", "whole number"),
    ("a huge number", lambda b: "/api/image/" + "9" * 40, "whole number"),
    ("another run", lambda b: f"/api/image/{b['index']}?run=0123456789ab", "another run"),
    ("a superscript digit", lambda b: "/api/image/%C2%B2", ""),  # '²'.isdigit() is True, int('²') fails
]


@pytest.mark.parametrize("url, fragment", [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES])
def test_an_image_outside_the_open_batch_is_a_404_with_one_json_line(run, url, fragment):
    sel = selected(run)
    c = client(run)
    before = snapshot(run)
    r = c.get(url({"index": sel["indices"][0], "indices": sel["indices"]}))
    one_line_error(r, 404, *([fragment] if fragment else []))
    assert snapshot(run) == before


def test_a_request_for_another_host_name_is_refused_with_400_and_changes_nothing(run):
    sel = selected(run)
    c = client(run)
    before = snapshot(run)
    for method, url, kw in (("GET", "/", {}), ("GET", "/api/batch", {}), ("GET", f"/api/image/{sel['indices'][0]}", {}),
                            ("POST", "/api/answer", {"content": json.dumps({"round": -1, "index": sel["indices"][0],
                                                                           "label": "red"}).encode()})):
        r = c.request(method, url, headers={"host": "attacker.example", "content-type": "application/json"}, **kw)
        assert r.status_code == 400, (url, r.status_code)
        # Starlette's TrustedHostMiddleware answers in plain text (not the page's JSON): still one line
        assert r.text.strip() and "\n" not in r.text.strip() and "Traceback" not in r.text, r.text
    assert snapshot(run) == before
    assert RunDir(run).read_answers(-1) == {}


def test_a_label_with_a_line_break_is_refused_with_a_one_line_reason(run):
    sel = selected(run)
    c = client(run)
    before = snapshot(run)
    r = post(c, {"round": -1, "index": sel["indices"][0], "label": "re\nd"})
    one_line_error(r, 400, "unknown class")
    assert snapshot(run) == before


def test_deeply_nested_json_is_a_400_not_a_server_error(run):
    c = client(run)
    before = snapshot(run)
    depth = 30_000  # 60 000 bytes: under the 64 KiB limit
    r = post(c, None, raw=b"[" * depth + b"]" * depth)
    one_line_error(r, 400)
    assert snapshot(run) == before


def test_the_json_media_type_is_matched_without_regard_to_case_or_parameters(run):
    """RFC 9110: type, subtype and charset are case-insensitive; none of these is a CORS-safelisted type,
    so accepting them lets no cross-site form in."""
    sel = selected(run)
    c = client(run)
    for k, ct in enumerate(("application/json; charset=utf-8", "application/json;charset=UTF-8",
                            "Application/JSON", "APPLICATION/JSON; charset=utf-8")):
        r = post(c, {"round": -1, "index": sel["indices"][k], "label": "red"}, content_type=ct)
        assert r.status_code == 200, (ct, r.status_code, r.text)
    assert RunDir(run).read_answers(-1) == {i: 0 for i in sel["indices"][:4]}


def test_a_body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_413(run):
    sel = selected(run)
    c = client(run)
    answer = json.dumps({"round": -1, "index": sel["indices"][0], "label": "blue"}).encode()
    before = snapshot(run)
    one_line_error(post(c, None, raw=answer.ljust(MAX_BODY + 1)), 413)
    assert snapshot(run) == before
    r = post(c, None, raw=answer.ljust(MAX_BODY))
    assert r.status_code == 200, r.text
    assert RunDir(run).read_answers(-1) == {sel["indices"][0]: CLASSES.index("blue")}


def test_continue_without_the_flag_and_wrong_methods_are_refused_and_change_nothing(run):
    c = client(run)
    before = snapshot(run)
    one_line_error(c.post("/api/continue", content=b"{}", headers={"content-type": "application/json"}), 403,
                   "--continue")
    assert c.get("/api/answer").status_code == 405
    assert c.put("/api/answer", content=b"{}", headers={"content-type": "application/json"}).status_code == 405
    assert c.post("/api/batch").status_code == 405
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- 2. nothing but the batch leaves

def test_no_raw_path_reaches_a_file_other_than_the_page_and_the_batch_images(served, pool):
    server, run = served
    root, order = pool["root"], pool["order"]
    sel = selected(run)
    queried = set(sel["indices"])
    page = raw_request(server.port, b"/")
    assert page[0] == 200
    page_body = body_of(page[1])
    assert b"<html" in page_body

    outside = next(p for i, p in enumerate(order) if i not in queried and pool["kinds"][p] == "png")
    passwd = Path("/etc/passwd").read_bytes()
    forbidden = {"/etc/passwd": passwd.splitlines()[0], "secret.txt": SECRET.strip()}
    for i, p in enumerate(order):
        if i not in queried:
            forbidden[p] = (root / p).read_bytes()
    absolute = str(root / outside).encode()
    q = urllib.parse.quote
    targets = [
        b"/api/image/../../../../etc/passwd", b"/api/image/..%2f..%2f..%2f..%2fetc%2fpasswd",
        b"/api/image/..%2F..%2F..%2F..%2Fetc%2Fpasswd", b"/api/image/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/api/image/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", b"/api/image/%252e%252e%252fetc%252fpasswd",
        b"/api/image/..%5c..%5c..%5cetc%5cpasswd", b"//etc/passwd", b"/etc/passwd", b"/../../etc/passwd",
        b"/api/image/0/../../../etc/passwd", f"/api/image/{sel['indices'][0]}/../../../../etc/passwd".encode(),
        b"/api/../../../../etc/passwd", b"/api/image/%00", b"/api/image/0%00.png",
        b"http://127.0.0.1/etc/passwd",
        absolute, b"/api/image/" + q(str(root / outside), safe="").encode(), b"/api/image/" + absolute,
        b"/" + outside.encode(), b"/api/image/" + outside.encode(), b"/api/image/" + q(outside, safe="").encode(),
        f"/api/image/{order.index(outside)}".encode(), f"/api/image/{order.index(outside)}?run=".encode(),
        b"/api/image/-1", b"/api/image/1e3", b"/api/image/" + b"9" * 40, b"/api/image/999999999999",
        b"/secret.txt", b"/api/image/secret.txt", b"/api/image/../secret.txt", b"/api/image/..%2fsecret.txt",
        b"/api/image/%2e%2e%2fphotos%2fsecret.txt", str(root / "secret.txt").encode(),
        b"/api/image/" + q(str(root / "secret.txt"), safe="").encode(),
    ]
    for target in targets:
        status, response = raw_request(server.port, target)
        body = body_of(response)
        assert status != 200 or body == page_body, (target, status, body[:200])
        for what, content in forbidden.items():
            assert content not in body, f"{target!r} served {what}"
    assert server.proc.poll() is None


# ----------------------------------------------------------------------------- 3. answering the whole batch

@pytest.mark.slow  # 11 s
def test_answers_given_on_the_page_are_stored_as_sent_and_resume_puts_exactly_them_in_the_pool(run, pool):
    truth = pool["truth"]
    sel = selected(run)
    c = client(run)
    batch = c.get("/api/batch").json()
    assert batch["round"] == -1 and batch["folder"] == "rounds/initial" and batch["classes"] == CLASSES
    assert batch["busy"] is None and batch["finished"] is False and batch["answers"] == {}
    assert [it["index"] for it in batch["items"]] == sel["indices"]
    assert [it["query"] for it in batch["items"]] == list(range(1, N_QUERIES + 1))
    assert [it["path"] for it in batch["items"]] == [pool["order"][i] for i in sel["indices"]]

    sent = {}
    for k, it in enumerate(batch["items"]):
        label = "skip" if k == 5 else truth[it["path"]]
        r = post(c, {"round": -1, "index": it["index"], "label": label})
        assert r.status_code == 200, r.text
        sent[it["index"]] = label
        assert r.json() == {"index": it["index"], "label": label, "answered": k + 1, "total": N_QUERIES}
    withdrawn = batch["items"][3]["index"]
    r = post(c, {"round": -1, "index": withdrawn, "label": None})
    assert r.json() == {"index": withdrawn, "label": None, "answered": N_QUERIES - 1, "total": N_QUERIES}
    assert RunDir(run).read_answers(-1) == {i: class_of(y) for i, y in sent.items() if i != withdrawn}
    assert str(withdrawn) not in c.get("/api/batch").json()["answers"]
    r = post(c, {"round": -1, "index": withdrawn, "label": sent[withdrawn]})
    assert r.json()["answered"] == N_QUERIES

    expected = {i: class_of(y) for i, y in sent.items()}
    assert c.get("/api/batch").json()["answers"] == {str(i): y for i, y in sent.items()}
    assert RunDir(run).read_answers(-1) == expected
    stored = json.loads((run / "rounds" / "initial" / "answers.json").read_text())
    assert sorted(map(tuple, stored["answers"])) == sorted(expected.items())

    resumed = ssal("run", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    pool_file = json.loads((run / "pool.json").read_text())
    assert {i: y for i, y, _ in pool_file["labeled"]} == expected
    assert len(pool_file["labeled"]) == N_QUERIES
    assert sum(y == -1 for _, y, _ in pool_file["labeled"]) == 1


# ----------------------------------------------------------------------------- 4. the images

def test_an_image_is_the_bytes_of_its_file_and_a_tiff_is_sent_as_a_png_of_the_same_pixels(run, pool):
    root = pool["root"]
    c = client(run)
    batch = c.get("/api/batch").json()
    kinds = {it["index"]: pool["kinds"][it["path"]] for it in batch["items"]}
    png = next(it for it in batch["items"] if kinds[it["index"]] == "png")
    tif = next(it for it in batch["items"] if kinds[it["index"]] == "tif")

    r = c.get(f"/api/image/{png['index']}?run={batch['run_id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (root / png["path"]).read_bytes()

    r = c.get(f"/api/image/{tif['index']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as got, Image.open(root / tif["path"]) as want:
        assert got.format == "PNG" and want.format == "TIFF"
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want.convert("RGB")))

    for it in batch["items"]:  # every image of the batch is its pool image
        if kinds[it["index"]] == "png":
            assert c.get(f"/api/image/{it['index']}").content == (root / it["path"]).read_bytes()


def test_a_pool_image_that_is_a_link_to_a_file_elsewhere_under_data_root_is_shown(run, pool):
    """The pool follows links that stay under data.root, so the run queries such images; the page must show
    them like any other (the path comes from the run, not from the request)."""
    root = pool["root"]
    c = client(run)
    batch = c.get("/api/batch").json()
    link = next(it for it in batch["items"] if pool["kinds"][it["path"]] == "link")
    assert (root / link["path"]).is_symlink()
    r = c.get(f"/api/image/{link['index']}")
    assert r.status_code == 200, r.text
    assert r.content == (root / link["path"]).read_bytes()


# ----------------------------------------------------------------------------- 5. the run's lock

def test_while_a_run_holds_its_lock_the_page_says_so_and_stores_answers(run):
    """A run that pretrains or trains holds the run's lock for minutes: people label meanwhile (answers
    go under the answers' lock, which the run leaves free), and only answers.json changes."""
    sel = selected(run)
    c = client(run)
    first, second = sel["indices"][:2]
    assert post(c, {"round": -1, "index": first, "label": "green"}).status_code == 200
    holder = RunDir(run)  # another open file of .lock: flock says held, as for another process
    holder.lock()
    try:
        state = c.get("/api/batch").json()
        assert state["busy"] and f"pid {os.getpid()}" in state["busy"], state["busy"]
        before = snapshot(run)
        for body in ({"round": -1, "index": second, "label": "red"}, {"round": -1, "index": first, "label": None}):
            r = post(c, body)
            assert r.status_code == 200, r.text
        after = snapshot(run)
        assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} == {"rounds/initial/answers.json"}
        assert RunDir(run).read_answers(-1) == {second: 0}
    finally:
        holder.unlock()
    assert c.get("/api/batch").json()["busy"] is None


def test_the_page_shows_what_the_running_run_does_and_ignores_what_a_killed_one_left(run):
    c = client(run)
    progress = {"stage": "pretrain simclr", "done": 12, "total": 40, "elapsed_s": 462.9, "remaining_s": 1080.0}
    (run / "progress.json").write_text(json.dumps(progress))  # a killed run leaves it: no holder, not shown
    try:
        assert c.get("/api/batch").json()["progress"] is None
        holder = RunDir(run)
        holder.lock()
        try:
            assert c.get("/api/batch").json()["progress"] == "pretrain simclr: 30 %, about 18 min left"
            (run / "progress.json").write_text("{half a wri")  # advisory: a damaged one shows nothing
            state = c.get("/api/batch").json()
            assert state["progress"] is None and state["busy"]
        finally:
            holder.unlock()
    finally:
        (run / "progress.json").unlink()


def test_while_another_transaction_holds_the_answers_lock_an_answer_waits_then_gets_409(run, monkeypatch):
    from ssal.label import answers

    monkeypatch.setattr(answers, "TRANSACTION_WAIT", 0.3)
    sel = selected(run)
    c = client(run)
    other = RunDir(run)
    other.lock(purpose="answers")
    try:
        before = snapshot(run)
        one_line_error(post(c, {"round": -1, "index": sel["indices"][0], "label": "red"}), 409, "in use")
        assert snapshot(run) == before
    finally:
        other.unlock("answers")
    assert post(c, {"round": -1, "index": sel["indices"][0], "label": "red"}).status_code == 200


def test_the_page_starts_while_another_process_holds_the_lock_and_says_busy(run):
    """serve() means to start while a run writes (``not state["busy"]``), and the page reports the run;
    the session must not refuse to open a run only because it is locked."""
    holder = RunDir(run)
    holder.lock()
    try:
        try:
            c = client(run)
        except SsalError as e:
            pytest.fail(f"the page cannot open a run whose lock another process holds: {e}")
        state = c.get("/api/batch").json()
        assert state["round"] == -1 and state["busy"], state
    finally:
        holder.unlock()


# ----------------------------------------------------------------------------- 6. the batch changes under the page

def test_after_resume_the_same_page_refuses_the_old_round_and_serves_the_new_batch(run, pool, capsys):
    truth = pool["truth"]
    c = client(run)
    batch = c.get("/api/batch").json()
    one_line_error(post(c, {"round": 0, "index": batch["items"][0]["index"], "label": "red"}), 409, "reload")
    for it in batch["items"]:
        assert post(c, {"round": -1, "index": it["index"], "label": truth[it["path"]]}).status_code == 200
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    new = selected(run, "r00")

    old = batch["items"][0]["index"]
    before = snapshot(run)
    one_line_error(post(c, {"round": -1, "index": old, "label": "blue"}), 409, "rounds/r00")
    one_line_error(post(c, {"round": -1, "index": new["indices"][0], "label": "blue"}), 409)
    assert snapshot(run) == before
    state = c.get("/api/batch").json()
    assert state["round"] == 0 and state["folder"] == "rounds/r00" and state["answers"] == {}
    assert [it["index"] for it in state["items"]] == new["indices"]
    assert all(it["suggestion"] in CLASSES and 0 <= it["confidence"] <= 1 for it in state["items"])
    one_line_error(c.get(f"/api/image/{old}"), 404)  # an image of the old batch
    assert c.get(f"/api/image/{new['indices'][0]}").status_code == 200
    r = post(c, {"round": 0, "index": new["indices"][0], "label": "blue"})
    assert r.status_code == 200 and r.json()["total"] == len(new["indices"])
    assert RunDir(run).read_answers(0) == {new["indices"][0]: 2}
    assert {i for i, _, _ in json.loads((run / "pool.json").read_text())["labeled"]} == set(selected(run)["indices"])


# ----------------------------------------------------------------------------- 7. the command line

@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory, tiny_recipe) -> Path:
    import yaml

    tmp = tmp_path_factory.mktemp("simulated")
    recipe = tmp / "sim.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp / "run", train={"steps": 2},
                                                 active={"rounds": 0, "initial": 20})))
    assert main(["run", str(recipe), "--no-progress"]) == 0
    return tmp / "run"


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


CLI_ERRORS = [
    ("a simulated run", lambda ctx: [str(ctx["simulated"])], ["active.oracle=simulated"]),
    ("no such folder", lambda ctx: [str(ctx["tmp"] / "nowhere")], ["does not exist"]),
    ("a folder that is not a run", lambda ctx: [str(ctx["other"])], ["not a run directory"]),
    ("a file", lambda ctx: [str(ctx["other"] / "notes.txt")], ["is a file"]),
    ("0.0.0.0 without --allow-remote", lambda ctx: [str(ctx["run"]), "--host", "0.0.0.0", "--port", "0"],
     ["--allow-remote"]),
    ("a port in use", lambda ctx: [str(ctx["run"]), "--port", str(ctx["busy"].getsockname()[1])], ["in use"]),
    ("port 70000", lambda ctx: [str(ctx["run"]), "--port", "70000"], ["70000"]),
    ("port -1", lambda ctx: [str(ctx["run"]), "--port", "-1"], ["-1"]),
    ("a port that is not a number", lambda ctx: [str(ctx["run"]), "--port", "http"], ["--port"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CLI_ERRORS], ids=[c[0] for c in CLI_ERRORS])
def test_serve_refuses_with_exit_2_and_one_error_line_and_changes_nothing(run, simulated_run, tmp_path, capsys,
                                                                          args, fragments):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello\n")
    busy = _busy_port()
    try:
        ctx = {"run": run, "simulated": simulated_run, "tmp": tmp_path, "other": other, "busy": busy}
        before = [snapshot(p) for p in (run, simulated_run, other)]
        capsys.readouterr()
        try:
            rc = main(["label", "serve", *args(ctx)])
        except SystemExit as e:  # argparse errors exit through SystemExit(2)
            rc = e.code
        out, err = capsys.readouterr()
        assert rc == 2, (out, err)
        one_error_line(err, *fragments)
        assert "Traceback" not in err and "labeling" not in out
        assert [snapshot(p) for p in (run, simulated_run, other)] == before
    finally:
        busy.close()


@pytest.mark.slow  # 5 s
def test_allow_remote_starts_with_a_warning_about_no_authentication_and_sigint_stops_it_with_exit_0(run):
    server = Server(run, "--host", "0.0.0.0", "--allow-remote")
    try:
        assert len(server.before) == 1, server.before
        warning = server.before[0]
        assert warning.startswith("warning:") and "no authentication" in warning and str(server.port) in warning
        assert server.first.startswith(f"labeling {N_QUERIES} images of ") and server.answered == 0
        assert server.batch()["round"] == -1  # reachable (any Host name is allowed on a remote address)
        status, _, _ = server.request("GET", "/api/batch", headers={"Host": "some-name.example"})
        assert status == 200
        rc, out, err = server.stop(signal.SIGINT)
    finally:
        server.kill()
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == "stopped the labeling page; every answer given is stored in the run"
    assert "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_right_after_the_startup_line_also_stops_with_exit_0(run):
    """The startup line says 'Ctrl-C to stop': a signal that arrives just after it (before uvicorn takes
    over the signals) must be the same clean stop, not 'ssal: interrupted' and exit 130."""
    for _ in range(3):
        server = Server(run)
        try:
            rc, out, err = server.stop(signal.SIGINT)
        finally:
            server.kill()
        assert rc == 0, (rc, err)
        assert "stopped the labeling page" in out


# ----------------------------------------------------------------------------- 8. kill -9 loses nothing

@pytest.mark.slow  # 9 s
def test_a_server_killed_with_sigkill_loses_no_acknowledged_answer(run, pool):
    truth = pool["truth"]
    server = Server(run)
    try:
        batch = server.batch()
        items = batch["items"]
        acked = {}
        for it in items[:6]:
            status, body = server.answer(-1, it["index"], truth[it["path"]])
            assert status == 200, body
            acked[it["index"]] = truth[it["path"]]
        # more answers while the server dies
        burst: dict[int, str] = {}

        def keep_answering():
            for it in items[6:]:
                try:
                    status, _ = server.answer(-1, it["index"], "skip")
                except (OSError, http.client.HTTPException, json.JSONDecodeError):
                    return
                if status == 200:
                    burst[it["index"]] = "skip"

        t = threading.Thread(target=keep_answering)
        t.start()
        time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        t.join(30)
    finally:
        server.kill()
    assert server.proc.returncode == -signal.SIGKILL

    stored = RunDir(run).read_answers(-1)  # verifies the seal: no torn answers.json
    for i, y in {**acked, **burst}.items():
        assert stored[i] == class_of(y), i
    assert set(stored) <= {it["index"] for it in items}
    assert all(stored[i] == -1 for i in stored if i not in acked)

    again = Server(run)
    try:
        assert again.answered == len(stored), again.first
        state = again.batch()
        assert state["answers"] == {str(i): ("skip" if y == -1 else CLASSES[y]) for i, y in stored.items()}
        status, body = again.answer(-1, items[-1]["index"], truth[items[-1]["path"]])
        assert status == 200, body
        rc, out, err = again.stop(signal.SIGTERM)
    finally:
        again.kill()
    assert rc == 0, err
    assert RunDir(run).read_answers(-1)[items[-1]["index"]] == CLASSES.index(truth[items[-1]["path"]])


# ----------------------------------------------------------------------------- 9. answers at the same time

def test_twenty_answers_posted_at_once_are_all_stored(served, pool):
    server, run = served
    truth = pool["truth"]
    items = server.batch()["items"][:20]
    assert len(items) == 20
    barrier = threading.Barrier(20)
    results: dict[int, tuple[int, dict]] = {}

    def give(it):
        barrier.wait(10)
        results[it["index"]] = server.answer(-1, it["index"], truth[it["path"]])

    threads = [threading.Thread(target=give, args=(it,)) for it in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    assert all(status == 200 for status, _ in results.values()), results
    # each write saw all the earlier ones: the counts are 1..20, each once
    assert sorted(body["answered"] for _, body in results.values()) == list(range(1, 21))
    want = {it["index"]: CLASSES.index(truth[it["path"]]) for it in items}
    assert RunDir(run).read_answers(-1) == want
    assert server.batch()["answers"] == {str(i): CLASSES[y] for i, y in want.items()}
