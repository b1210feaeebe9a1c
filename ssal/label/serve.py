"""``ssal label serve``: a labeling page in the browser for the open query batch of a human run.

One image at a time, large, with the class buttons and keys; a grid of the batch; every answer is
stored as it is given through :func:`ssal.label.answers.update_answers`, the same validated, locked and
atomic path as ``ssal label import``, so a reload, a closed tab or a killed server lose nothing. Answers
are stored while a run pretrains or trains too (under the answers' lock, which the run leaves free).
With ``--continue`` the page also runs ``ssal run --resume`` when the batch is complete and serves
the next batch when it is ready.

The server is Starlette on uvicorn (small, well kept, no build step); the page is one HTML file
with its CSS and JS inline and no CDN, so it works offline. There is no authentication: it binds
to loopback unless told otherwise, refuses requests for another host name (DNS rebinding), and a
request that changes something must be ``application/json``, carry the token the page was served
with (another site's page cannot read it) and come from no other site's Origin or Referer. Images
are served by pool index, only for the open batch, from the paths the run recorded (a request
never names a file), only from under data.root, only as the image that was queried (its digest),
decoded.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hmac
import io
import ipaddress
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import uvicorn
from omegaconf import OmegaConf
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from torchvision.transforms.functional import to_pil_image

from ssal import files
from ssal.data import load_dataset
from ssal.data.label_files import SKIP_WORDS
from ssal.data.pool import SKIP
from ssal.errors import ConfigError, DataError, SsalError, one_line
from ssal.files import Damaged
from ssal.label import answers as labels
from ssal.label.stopping import is_complete
from ssal.run.readers import doing, measured
from ssal.run.store import RunDir

BROWSER_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp",
                   "BMP": "image/bmp"}  # shown as they are; anything else (TIFF, ...) is sent as PNG
MAX_BODY = 64 * 1024  # an answer is ~100 bytes
LOG_LINES = 200  # of the --continue run, kept for the page


class Problem(Exception):
    """A bad request: an HTTP status and one line saying why (nothing was changed)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.headers = status, headers or {}


@dataclass
class Item:
    query: int
    index: int
    path: str | None
    suggestion: str
    confidence: float | None
    digest: str | None = None  # of the file when it was queried: the page shows only that image


class Job:
    """``ssal run ARGS`` in a child process (``--resume RUN_DIR``, or a recipe the page started), its output
    (plain progress lines, since it is a pipe) kept for the page."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.started = time.time()
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.proc = subprocess.Popen([sys.executable, "-m", "ssal", "run", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def state(self) -> dict:
        rc = self.proc.poll()
        return {"running": rc is None, "rc": rc, "seconds": round(time.time() - self.started, 1),
                "log": list(self.lines)[-30:]}

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()  # SIGTERM: the run stops cleanly, committed rounds are kept
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Session:
    """The labeling page's view of one run: its open batch, the answers, and what may be done now."""

    def __init__(self, run_dir: str | os.PathLike, allow_continue: bool = False):
        self.rd = RunDir(run_dir)
        self.identity = labels.human_run(self.rd, in_use_ok=True)  # a one-line error if this is not a human run
        self.classes: list[str] = list(self.identity["pool"]["classes"])
        root = (self.identity["recipe"].get("data") or {}).get("root")
        self.root = Path(os.path.expanduser(root)).resolve() if root else None
        self.allow_continue = allow_continue
        self.run_id = self.rd.run_id()  # in image URLs: another run's image 5 is never taken from the browser cache
        self.token = secrets.token_urlsafe(24)  # in the page; every request that changes something must carry it
        self.job: Job | None = None
        self.write_lock = threading.Lock()  # one write at a time within this server (the run lock is between processes)
        self._split = None  # the pool's images when they are not files (builtin data sets)
        self._split_lock = threading.Lock()
        self._items: dict[tuple[int, bool], list[Item]] = {}  # (round, ahead) -> its items (a record never changes)

    # ------------------------------------------------------------------ reading
    def batch(self) -> tuple[labels.Batch | None, str]:
        """The open batch, or None and why there is none."""
        replaced = self._replaced()
        if replaced:
            return None, replaced
        try:
            batch = labels.open_batch(self.rd, self.identity)
        except (ConfigError, Damaged) as e:
            ahead = self._ahead()  # the batch was taken: the images chosen ahead, while the next round trains
            return (ahead, "") if ahead is not None else (None, str(e))
        ahead = self._ahead()  # the batch is complete, and a run works that will take it (pretraining): label on
        if ahead is not None and ((self.job and self.job.running) or self.rd.holder()):
            return ahead, ""
        return batch, ""

    def _ahead(self) -> labels.Batch | None:
        try:
            return labels.open_ahead(self.rd, self.identity)
        except SsalError:
            return None

    def _replaced(self) -> str | None:
        """Why this page no longer serves the run it was started for (``ssal run --force`` made another)."""
        try:
            same = self.rd.run_id() == self.run_id
        except SsalError:
            same = False
        return None if same else (f"{self.rd.path} no longer holds the run this page was started for; start "
                                  f"'ssal label serve {self.rd.path}' again")

    def items(self, batch: labels.Batch) -> list[Item]:
        key = (batch.round, batch.ahead)
        if key not in self._items:
            record = self.rd.selection_record(batch.round)
            n, pre = len(batch.indices), "ahead_" if batch.ahead else ""
            paths = record.get(f"{pre}paths") or [None] * n
            suggestions = record.get(f"{pre}suggestions") or [""] * n
            confidences = record.get(f"{pre}confidences") or [None] * n
            digests = record.get(f"{pre}digests") if len(record.get(f"{pre}digests") or []) == n else [None] * n
            self._items[key] = [Item(q, i, p, s or "", c, d) for q, (i, p, s, c, d) in
                                enumerate(zip(batch.indices, paths, suggestions, confidences, digests, strict=True),
                                          start=1)]
        return self._items[key]

    def state(self) -> dict:
        batch, why = self.batch()
        holder = None if self.job and self.job.running else self.rd.holder()
        out = {"run": str(self.rd.path), "run_id": self.run_id, "classes": self.classes, "skip": SKIP_WORDS[0],
               "busy": ("the run is working" if self.job and self.job.running
                        else f"a run is in progress ({holder})" if holder else None),
               "can_continue": self.allow_continue, "job": self.job.state() if self.job else None,
               "continue_command": f"ssal run --resume {self.rd.path}"}
        progress = self.rd.progress() if out["busy"] else None
        out["progress"] = doing(progress) if progress else None
        try:
            rows = self.rd.committed()
        except SsalError:  # a damaged metrics.jsonl: the run says so when it resumes; the batch can still be labeled
            rows = []
        out["accuracy"] = f"round {rows[-1]['round']}: {measured(rows[-1])}" if rows else None
        if batch is None:
            rows = self.rd.committed()  # damaged: the page says so (a 500 with the line)
            out.update(round=None, items=[], answers={}, message=why,
                       finished=is_complete(rows, self.identity["recipe"].get("active") or {}))
            return out
        stored = labels.stored_answers(self.rd, batch)  # a damaged answers.json: a one-line DataError
        out.update(round=batch.round, folder=batch.folder, finished=False, ahead=batch.ahead,
                   items=[{"query": it.query, "index": it.index, "path": it.path, "suggestion": it.suggestion,
                           "confidence": it.confidence} for it in self.items(batch)],
                   answers={str(i): self._name(y) for i, y in stored.items()})
        return out

    def _name(self, y: int) -> str:
        return SKIP_WORDS[0] if y == SKIP else self.classes[y]

    # ------------------------------------------------------------------ answering
    def answer(self, body: object) -> dict:
        """Store one answer ``{"round": r, "index": i, "label": "cat" | "skip" | null}`` (null withdraws it;
        ``"ahead": true`` answers an image chosen ahead)."""
        if not isinstance(body, dict) or set(body) - {"round", "index", "label", "ahead"} \
                or {"round", "index", "label"} - set(body) or not isinstance(body.get("ahead", False), bool):
            raise Problem(400, 'give a JSON object {"round": R, "index": I, "label": "CLASS" | "skip" | null}')
        r, i, label, ahead = body["round"], body["index"], body["label"], body.get("ahead", False)
        if not _is_int(r) or not _is_int(i):
            raise Problem(400, "round and index must be whole numbers")
        if label is not None and not isinstance(label, str):
            raise Problem(400, "label must be a class name, 'skip' or null")

        def given(batch: labels.Batch, pool) -> dict[int, int | None]:
            replaced = self._replaced()  # checked under the run's lock, like everything update_answers reads
            if replaced:
                raise Problem(409, replaced)
            if i not in batch.indices:
                raise Problem(400 if 0 <= i < pool.n else 404,
                              f"index {i} is not one of the {len(batch.indices)} images of {batch.folder}")
            if label is None:
                return {i: None}
            try:
                y = pool.label_of(label, f"the answer to index {i}")
            except SsalError as e:
                raise Problem(400, str(e)) from None
            if y is None:
                raise Problem(400, "an empty label; give a class name, 'skip', or null to withdraw the answer")
            return {i: y}

        with self.write_lock:
            try:
                done = labels.update_answers(self.rd, self.identity, "the labeling page", given, expect_round=r,
                                             ahead=ahead)
            except SsalError as e:  # the run is in use, another batch is open, answers.json is damaged, ...
                raise Problem(409, str(e)) from None
        answered = sum(1 for j in done.batch.indices if j in done.answers)
        return {"index": i, "label": label, "answered": answered, "total": len(done.batch.indices)}

    # ------------------------------------------------------------------ images
    def image(self, index: int) -> tuple[bytes, str]:
        batch, why = self.batch()
        if batch is None:
            raise Problem(404, why)
        item = next((it for it in self.items(batch) if it.index == index), None)
        if item is None:
            raise Problem(404, f"index {index} is not an image of the open batch {batch.folder}")
        if item.path is not None:
            return self._file(item)
        split = self._pool_split()
        buf = io.BytesIO()
        to_pil_image(split.load(torch.tensor([index]))[0]).save(buf, format="PNG")
        return buf.getvalue(), "image/png"

    def _file(self, item: Item) -> tuple[bytes, str]:
        """The image ``item`` names: a file under data.root (links resolved, none out of it), the image the
        run queried (its digest), decoded; sent as it is in a format browsers show, else as a PNG."""
        if self.root is None:
            raise Problem(500, "the run's recipe has no data.root")
        rel = item.path
        path = Path(os.path.realpath(self.root / rel))
        if Path(rel).is_absolute() or not path.is_relative_to(self.root):  # selected.json names it: never above
            raise Problem(404, f"{rel} does not lead to a file under data.root")
        try:
            data = _read_regular_file(path)
        except OSError as e:
            raise Problem(404, f"cannot read {rel} under data.root ({e.strerror}); was the image moved?") from None
        if item.digest is not None and files.digest(data) != item.digest:
            raise Problem(409, f"{rel} has changed since it was queried; put the original file back (its answer "
                               "would be for another image)")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # decodes: a file that is not a whole image is never sent
                if im.format in BROWSER_FORMATS:
                    return data, BROWSER_FORMATS[im.format]
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
                return buf.getvalue(), "image/png"
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise Problem(409, f"{rel} is not an image that can be decoded ({type(e).__name__}); replace it") from None

    def _pool_split(self):
        with self._split_lock:  # the page asks for several images at once; load the data set once
            if self._split is None:

                cfg = OmegaConf.create(self.identity["recipe"])  # resolved and checked when the run was made
                self._split = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir).train
        return self._split

    def check_images(self) -> None:
        """Before serving: every image of the open batch can be read (a one-line error if some moved);
        a pool that is not files (a builtin data set) is loaded now, not on the first request."""
        batch, _ = self.batch()
        if batch is None:
            return
        paths = [it.path for it in self.items(batch) if it.path is not None]
        if not paths:
            self._pool_split()
            return
        missing = [p for p in paths if self.root is None or not (self.root / p).is_file()]
        if missing:
            raise DataError(f"{len(missing)} of the {len(paths)} images of {batch.folder} are not under data.root "
                            f"({self.root}), e.g. {missing[0]}; put them back (the run's labels name these paths)")
        labels.check_answered_images(self.rd, self.identity, batch, list(batch.indices))

    # ------------------------------------------------------------------ the next round
    def start_continue(self) -> dict:
        if not self.allow_continue:
            raise Problem(403, "start the server with --continue to run the next round from the page")
        if self.job and self.job.running:
            raise Problem(409, "the next round is already running")
        batch, why = self.batch()
        if batch is not None and not batch.ahead:  # (images chosen ahead wait for no one)
            missing = sum(1 for i in batch.indices if i not in self.rd.answers_of(batch.round))
            if missing:
                raise Problem(409, f"{missing} of {len(batch.indices)} images of {batch.folder} still await labels")
        elif self.state()["finished"]:
            raise Problem(409, why)
        holder = self.rd.holder()
        if holder:
            raise Problem(409, f"the run is in use by another ssal process ({holder})")
        self.job = Job("--resume", str(self.rd.path))
        return {"started": True}

    def close(self) -> None:
        if self.job:
            self.job.stop()


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (a named pipe put in an image's place would block a
    plain read forever: opened without blocking, then refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- HTTP

def page() -> bytes:
    return resources.files("ssal").joinpath("label/web/label.html").read_bytes()


def _problem(e: Problem) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=e.headers)


def _from_the_page(request: Request, token: str) -> None:
    """A request that changes something comes from this server's own page: it carries the page's token
    (another site's page cannot read it) and no other site's Origin (or Referer)."""
    given = request.headers.get("x-ssal-token", "")
    if not (given.isascii() and hmac.compare_digest(given, token)):
        raise Problem(403, "this request does not come from the labeling page (its token is missing or wrong); "
                           "answer on the page itself, or reload it",
                      {"X-SSAL-Stale-Token": "1"})  # the page of a restarted server reads the new one
    own = f"http://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is None and request.headers.get("referer"):
        try:
            parts = urllib.parse.urlsplit(request.headers["referer"])
            origin = f"{parts.scheme}://{parts.netloc}"
        except ValueError:  # not a URL: not this page's
            origin = request.headers["referer"]
    if origin is not None and origin != own:
        raise Problem(403, f"a request from another site ({one_line(origin)[:100]}) is refused; use the page at "
                           f"{own}/")


async def _json_body(request: Request) -> object:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise Problem(415, "send the answer as application/json")
    too_big = Problem(413, f"the request is over {MAX_BODY} bytes; an answer is a small JSON object")
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise too_big
    raw = b""
    async for chunk in request.stream():  # stop reading at the limit, whatever the headers said
        raw += chunk
        if len(raw) > MAX_BODY:
            raise too_big
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, nesting deeper than Python's stack
        raise Problem(400, f"malformed JSON ({one_line(str(e))[:200]})") from None


def create_app(session: Session, allowed_hosts: list[str]) -> Starlette:
    html = page().replace(b"{{SSAL_TOKEN}}", session.token.encode())

    def index(request: Request) -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    def batch(request: Request) -> Response:
        try:
            return JSONResponse(session.state(), headers={"Cache-Control": "no-store"})
        except SsalError as e:  # e.g. a damaged answers.json
            return _problem(Problem(500, str(e)))

    async def answer(request: Request) -> Response:
        try:
            _from_the_page(request, session.token)
            body = await _json_body(request)
            return JSONResponse(await run_in_threadpool(session.answer, body))
        except Problem as e:
            return _problem(e)

    def image(request: Request) -> Response:
        raw = request.path_params["index"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # '²'.isdigit() is True
            return _problem(Problem(404, "an image is named by its pool index, a whole number"))
        if request.query_params.get("run", session.run_id) != session.run_id:
            return _problem(Problem(404, "an image of another run; reload the page"))
        try:
            data, media = session.image(int(raw))
        except Problem as e:
            return _problem(e)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                          "X-Content-Type-Options": "nosniff"})

    async def cont(request: Request) -> Response:
        try:
            _from_the_page(request, session.token)
            if await _json_body(request) != {}:
                raise Problem(400, "continue takes an empty JSON object {}")
            return JSONResponse(session.start_continue())
        except Problem as e:
            return _problem(e)

    routes = [Route("/", index), Route("/api/batch", batch), Route("/api/answer", answer, methods=["POST"]),
              Route("/api/image/{index}", image), Route("/api/continue", cont, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error (port in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ConfigError(f"--host '{host}' is not an address of this machine; use 127.0.0.1 (default)") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise ConfigError(f"port {port} on {host} is in use; pass --port N (or --port 0 for a free one)") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --host/--port") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def start_run(recipe: Path, run: Path, announce=print, wait: float = 600.0) -> Job | None:
    """The run of ``recipe`` (a recipe file given to ``ssal label serve``, its output_dir ``run``): started
    now in a child process when ``run`` holds no run yet (the page then serves its first batch while it
    pretrains); None when it holds one. A run that fails to start is its one-line error."""
    if RunDir(run).kind() == "run":
        return None
    announce(f"starting the run of {recipe} in {run}")
    job = Job(str(recipe))
    deadline = time.monotonic() + wait
    while True:  # until it has asked its first batch, or says what it does (pretraining first), or ended
        rd, ended = RunDir(run), job.proc.poll() is not None
        if rd.kind() == "run" and (ended or rd.saved_selection(-1) is not None or rd.progress() is not None):
            return job
        if ended:
            job.reader.join(timeout=5)
            last = next((line for line in reversed(job.lines) if line.strip()), f"exit status {job.proc.returncode}")
            raise ConfigError(f"the run of {recipe} did not start: {last.removeprefix('ssal: error: ')}")
        if time.monotonic() > deadline:
            job.stop()
            raise ConfigError(f"the run of {recipe} did not start within {wait:.0f} s; run 'ssal run {recipe}' to "
                              "see why")
        time.sleep(0.1)


def open_session(run_dir: str | os.PathLike, allow_continue: bool, recipe: Path | None, announce=print) -> Session:
    """The page's session of ``run_dir``; with ``recipe`` (the file it came from) the page runs the whole
    loop: the run is started in the background, or goes on by itself when it awaits no answer."""
    job = start_run(recipe, Path(run_dir), announce) if recipe is not None else None
    try:
        session = Session(run_dir, allow_continue or recipe is not None)
    except BaseException:
        if job is not None:
            job.stop()
        raise
    session.job = job
    if recipe is not None and job is None:
        batch, _ = session.batch()
        if batch is not None and batch.round == -1 and session.rd.holder() is None:
            session.job = Job("--resume", str(session.rd.path))  # pretraining (if not done) runs while it is labeled
        else:
            with contextlib.suppress(Problem):  # it awaits answers, is complete, or another process runs it
                session.start_continue()
    return session


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False,
          allow_continue: bool = False, announce=print, recipe: Path | None = None) -> None:
    """Serve the labeling page of ``run_dir`` until Ctrl-C / SIGTERM. With ``recipe`` (``ssal label serve
    RECIPE``: ``run_dir`` is its output_dir) the page runs the whole loop (:func:`open_session`)."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"--host {host} would let other machines label (and read the images) without a password; "
                          "pass --allow-remote to do it anyway, or keep the default 127.0.0.1")
    session = open_session(run_dir, allow_continue, recipe, announce)
    state = session.state()
    # without a batch, serve only to wait for one: while a run is writing it, or to start the run (--continue)
    if state["round"] is None and not state["busy"] and not (allow_continue and not state["finished"]):
        raise ConfigError(state["message"])
    session.check_images()
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    names = {host, "localhost", "127.0.0.1", "::1", "[::1]"} if is_loopback(host) else {"*"}
    app = create_app(session, sorted(names))
    shown = f"[{host}]" if ":" in host else host
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    # Ctrl-C (or SIGTERM) is how a server stops (every answer is stored already), also before uvicorn takes the
    # signals over: until then a signal only asks it to stop, so none lands inside asyncio's setup
    warnings.filterwarnings("ignore", message="coroutine 'Server.serve' was never awaited")

    def stop(signum, frame) -> None:
        server.force_exit = server.should_exit
        server.should_exit = True

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        if not is_loopback(host):
            announce(f"warning: the page on {host} has no authentication: anyone who can reach port {bound} can "
                     "label this run and see its images")
        if state["round"] is not None:
            n = len(state["items"])
            announce(f"labeling {n} images of {run_dir}/{state['folder']} ({len(state['answers'])} of {n} answered) "
                     f"at http://{shown}:{bound}/ (Ctrl-C to stop)")
        else:
            why = state["busy"] or state["message"]
            announce(f"the labeling page of {run_dir} is at http://{shown}:{bound}/ ({why}) (Ctrl-C to stop)")
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        session.close()
        sock.close()
