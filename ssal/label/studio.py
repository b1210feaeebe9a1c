"""``ssal label push`` / ``ssal label pull``: the open batch into a Label Studio project, and its answers back,
through Label Studio's REST API.

Written on the standard library's ``urllib``: the handful of calls below (projects, a Local files storage,
task import, the project's model version, the JSON export) need no more, and Label Studio's own SDK would
bring its pins (pydantic, httpx, ...) into ssal's environment. Checked against Label Studio 1.23.2
(tests/test_label_studio_server.py runs one).

A project is found by its id (``--project``) or by the title ssal gives it, ``ssal <parent>/<run folder> <run id>``,
so pushing every round into one project needs no bookkeeping in the run. Pushing is idempotent: tasks
already in the project (the same run and index) are not imported again.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ssal.errors import SsalError, one_line
from ssal.label import queries
from ssal.label.answers import import_labels
from ssal.run.store import RunDir

URL_ENV, TOKEN_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"  # the names Label Studio's own tools read
DEFAULT_URL = "http://localhost:8080"
TIMEOUT = 60.0  # s per request
PAGE = 1000  # tasks or projects per listed page


class Studio:
    """A Label Studio server's REST API. ``token``: a legacy API token (sent as ``Token``) or a personal access
    token (a JWT, exchanged once for an access token, sent as ``Bearer``)."""

    def __init__(self, url: str | None, token: str | None):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SsalError(f"--url '{one_line(self.url)}' is not a Label Studio address; give one such as "
                            f"{DEFAULT_URL} (or set {URL_ENV})")
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise SsalError(f"no Label Studio token: give it with --token or {TOKEN_ENV} (Label Studio: Account & "
                            "Settings > Personal Access Token, or the legacy Access Token)")
        self.auth = f"Token {token}"
        if token.count(".") == 2:  # a personal access token: a refresh JWT
            self.auth = None
            access = self.call("POST", "/api/token/refresh", {"refresh": token}, what="the personal access token")
            self.auth = f"Bearer {access['access']}"

    def call(self, method: str, path: str, body=None, raw: bool = False, what: str | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.auth:
            headers["Authorization"] = self.auth
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, method=method, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                got = r.read()
        except urllib.error.HTTPError as e:
            detail = _detail(e.read())
            if e.code in (401, 403):
                raise SsalError(f"Label Studio at {self.url} refused {what or 'the token'} (HTTP {e.code}"
                                f"{': ' + detail if detail else ''}); give a valid token with --token or {TOKEN_ENV}"
                                ) from None
            raise StudioError(e.code, f"Label Studio at {self.url} answered {method} {path.split('?')[0]} with HTTP "
                                      f"{e.code}{': ' + detail if detail else ''}") from None
        except (OSError, ValueError) as e:  # refused, unknown host, timeout, TLS
            reason = getattr(e, "reason", e)
            raise SsalError(f"cannot reach Label Studio at {self.url} ({one_line(str(reason))}): start it, or give "
                            f"its address with --url or {URL_ENV}") from None
        if raw:
            return got
        try:
            return json.loads(got or b"null")
        except ValueError:
            raise SsalError(f"{self.url} answered {method} {path.split('?')[0]} with something that is not JSON: is "
                            "it Label Studio?") from None

    def listed(self, path: str, key: str) -> list[dict]:
        """Every item of a paginated list (``key``: where a page holds them)."""
        out, page = [], 1
        while True:
            sep = "&" if "?" in path else "?"
            got = self.call("GET", f"{path}{sep}page={page}&page_size={PAGE}")
            items = got if isinstance(got, list) else got.get(key) or []
            out += items
            total = got.get("total", got.get("count")) if isinstance(got, dict) else None
            if isinstance(got, list) or not items or total is None or len(out) >= total:
                return out
            page += 1


class StudioError(SsalError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _detail(body: bytes) -> str:
    try:
        got = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(got, dict):
        return ""
    parts = [str(got.get("detail") or "")]
    for field, problems in (got.get("validation_errors") or {}).items():
        parts.append(f"{field}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}")
    text = one_line("; ".join(p for p in parts if p and p != "Validation error") or str(got.get("detail") or ""))
    if len(text) > 300:  # Label Studio's longer messages: their first sentences
        text = text[:text.rfind(". ", 0, 300) + 1] or text[:300] + " ..."
    return text


def project_title(run_dir: str | os.PathLike) -> str:
    """The title ssal gives the run's project: the run folder (with its parent's name) and the run's id
    (Label Studio takes up to 50 characters)."""
    rd = RunDir(run_dir)
    folder = Path(rd.path).resolve()
    return f"ssal {(folder.parent.name + '/' + folder.name)[-32:]} {rd.run_id()[:8]}"


def find_project(studio: Studio, title: str, project: int | None) -> dict | None:
    if project is not None:
        try:
            return studio.call("GET", f"/api/projects/{project}")
        except StudioError as e:
            if e.code == 404:
                raise SsalError(f"Label Studio at {studio.url} has no project {project}; leave out --project to use "
                                f"(or create) the run's own project '{title}'") from None
            raise
    found = [p for p in studio.listed("/api/projects", "results") if p.get("title") == title]
    return found[0] if found else None


def _answers_as_label_studio(call):
    """A command whose server answered JSON of another shape (not Label Studio, or another version of it):
    one line, not a KeyError."""

    @functools.wraps(call)
    def wrapped(run_dir, url=None, *args, **kwargs):
        try:
            return call(run_dir, url, *args, **kwargs)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            where = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
            raise SsalError(f"{where} answered in a shape Label Studio does not ({type(e).__name__}: "
                            f"{one_line(str(e))[:80]}): is it Label Studio (1.23 tested)?") from None

    return wrapped


@_answers_as_label_studio
def push(run_dir: str | os.PathLike, url: str | None = None, token: str | None = None,
         project: int | None = None) -> str:
    """Put the open batch into the run's Label Studio project (created with its labeling config and a Local
    files storage on ``data.root`` the first time), its suggestions shown. Returns what happened, for people."""
    tasks, config, folder, identity = queries.label_studio_batch(run_dir)
    studio = Studio(url, token)
    title = project_title(run_dir)
    found = find_project(studio, title, project)
    created = found is None
    if created:
        found = studio.call("POST", "/api/projects", {"title": title, "label_config": config})
    pid = found["id"]
    root = queries.storage_root(identity)
    if root is not None:
        storages = studio.call("GET", f"/api/storages/localfiles?project={pid}")
        if not any(Path(s.get("path") or "") == root for s in storages or []):
            try:
                studio.call("POST", "/api/storages/localfiles", {"project": pid, "path": str(root), "title": root.name})
            except StudioError as e:
                raise SsalError(f"{e}; Label Studio serves the images of {root} only when started with "
                                f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                                f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root.parent}") from None
    there = {(t["data"].get("ssal_run"), t["data"].get("ssal_index"))
             for t in studio.listed(f"/api/tasks?project={pid}", "tasks")}
    new = [t for t in tasks if (t["data"]["ssal_run"], t["data"]["ssal_index"]) not in there]
    if new:
        studio.call("POST", f"/api/projects/{pid}/import", new)
    version = next((p["model_version"] for t in tasks for p in t.get("predictions") or []), None)
    if version is not None:  # a project keeps the model version of the first predictions it was given
        studio.call("PATCH", f"/api/projects/{pid}", {"model_version": version})
    return (f"pushed {len(new)} tasks of {folder} to Label Studio project '{found.get('title', title)}' (id {pid}"
            f"{', new' if created else ''})" + (f"; {len(tasks) - len(new)} were there already" if len(new) < len(tasks)
                                               else "") +
            (f"; its suggestions are model version '{version}'" if version else "") +
            f": {studio.url}/projects/{pid}/data; when they are labeled: ssal label pull {run_dir}")


@_answers_as_label_studio
def pull(run_dir: str | os.PathLike, url: str | None = None, token: str | None = None, project: int | None = None,
         annotators: str = "refuse") -> str:
    """Import the answers of the run's Label Studio project (its JSON export: every task, cancelled ones too)
    as ``ssal label import`` does. Returns what happened, for people."""
    queries.label_studio_batch(run_dir)  # a human run with an open batch, or its one-line error, before the network
    studio = Studio(url, token)
    title = project_title(run_dir)
    found = find_project(studio, title, project)
    if found is None:
        raise SsalError(f"Label Studio at {studio.url} has no project '{title}': push the open batch first "
                        f"(ssal label push {run_dir}), or name the project with --project ID")
    export = studio.call("GET", f"/api/projects/{found['id']}/export?exportType=JSON", raw=True)
    with tempfile.TemporaryDirectory(prefix="ssal-pull-") as tmp:
        path = Path(tmp) / f"label-studio-project-{found['id']}.json"
        path.write_bytes(export)
        try:
            return f"from Label Studio project {found['id']}: " + import_labels(run_dir, path, annotators)
        except SsalError as e:  # named as the person knows it, not by a file that is gone
            raise type(e)(str(e).replace(str(path), f"the export of Label Studio project {found['id']}")) from None
