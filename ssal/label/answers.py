"""Labels from people: the queries a run writes, the files people answer with, and their import.

With ``active.oracle: human`` a round ends after selection: the run writes ``rounds/rXX/queries.csv``
(one row per image: query number, pool index, path, the model's suggestion and confidence, an empty
``label`` column) and ``queries.png`` (a contact sheet), then stops. People answer in that CSV or in
Label Studio (``ssal label export``); ``ssal label import`` validates a whole file against the open
batch (all or nothing) and stores the answers atomically in ``answers.json``; ``ssal run --resume``
goes on once every query has an answer. "skip" / "unsure" are answers too: the image leaves the
candidates and the next round buys one more.

Every parser here turns a malformed file into one :class:`~ssal.errors.DataError` line that names the
file, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ssal import files
from ssal.data.pool import SKIP, ActivePool
from ssal.errors import ConfigError, DataError, closest, one_line
from ssal.outputs import Output, check_file, data_folders, starts_with
from ssal.rundir import RunDir, RunInUse, check_unchanged

SKIP_WORDS = ("skip", "unsure")
QUERY_COLUMNS = ("query", "index", "path", "suggestion", "confidence", "label", "run")
LS_PREFIX = "/data/local-files/?d="  # how Label Studio serves local files
TRANSACTION_WAIT = 10.0  # seconds an import or an answer waits for another one to finish (two pages, ...)


@dataclass
class Batch:
    """The open query batch of a run: acquisition ``round``'s ``indices`` (and their paths)."""

    round: int
    indices: list[int]

    @property
    def folder(self) -> str:
        return "rounds/initial" if self.round < 0 else f"rounds/r{self.round:02d}"


# ----------------------------------------------------------------------------- reading answer files

@dataclass
class _Pool:
    """What an answer file is checked against: the pool's size, paths and classes."""

    n: int
    names: dict[int, str] | None  # index -> path relative to data.root (the images a file may name)
    classes: list[str]
    root: Path | None = None
    what: str = "an image of the pool"

    def __post_init__(self) -> None:
        self.by_path = {} if self.names is None else {p: i for i, p in self.names.items()}

    def index_of_path(self, raw: str) -> int | None:
        """The index a path names: as ssal's CSV protection wrote it (a leading apostrophe: tried first, so
        ssal's own CSV reads back even beside a file whose name is the protected form), as written, without
        the spaces a spreadsheet may add, as a Label Studio reference (URL-encoded) or an absolute path."""
        for p in dict.fromkeys((files.csv_plain(raw), raw, files.csv_plain(raw.strip()), raw.strip())):
            if p.startswith(LS_PREFIX):
                p = urllib.parse.unquote(p[len(LS_PREFIX):])
            if self.root is not None and os.path.isabs(p):
                p = os.path.relpath(p, self.root)
            p = os.path.normpath(p).replace(os.sep, "/") if p else p
            if p in self.by_path:
                return self.by_path[p]
        return None

    def label_of(self, raw: str, where: str) -> int | None:
        """A class index, SKIP, or None for an empty answer."""
        text = files.csv_plain(raw.strip())
        if not text:
            return None
        if text in self.classes:
            return self.classes.index(text)
        if text.lower() in SKIP_WORDS:
            return SKIP
        hint = closest(text.lower(), [c.lower() for c in self.classes])
        hint = f" (did you mean '{self.classes[[c.lower() for c in self.classes].index(hint)]}'?)" if hint else ""
        raise DataError(f"{where}: unknown class '{one_line(text)}'{hint}; the classes are {', '.join(self.classes)} "
                        f"(or {'/'.join(SKIP_WORDS)} for no label)")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"label file '{path}' not found; check the path") from None
    except IsADirectoryError:
        raise DataError(f"label file '{path}' is a folder; give a CSV or Label Studio JSON file") from None
    except OSError as e:
        raise DataError(f"cannot read label file '{path}': {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")  # spreadsheets often add a byte-order mark
    except UnicodeDecodeError:
        raise DataError(f"label file '{path}' is not UTF-8 text; save it as 'CSV UTF-8' (or JSON) and import it "
                        "again") from None


class NoLabels(DataError):
    """A label file whose every label is empty."""


def read_answer_file(path: str | os.PathLike, pool: _Pool, run_id: str | None = None) -> tuple[dict[int, int], int]:
    """``({index: label or SKIP}, rows without an answer)`` of a CSV or Label Studio JSON file."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        rows = _label_studio_rows(path, text, run_id)
    else:
        rows = _csv_rows(path, text, run_id)
    given: dict[int, list[tuple[str, int | None, str]]] = {}  # index -> (where, label or None, as written)
    for where, index, path_text, label_texts in rows:
        i = _resolve(pool, where, index, path_text)
        for label_text in [label_texts] if isinstance(label_texts, str) else label_texts:
            given.setdefault(i, []).append((where, pool.label_of(label_text, where), label_text.strip()))
    several = {i: got for i, got in given.items() if len({label for _, label, _ in got}) > 1}
    if several:  # one image, different answers (two rows, or several annotators): ssal will not pick one
        i, got = next(iter(several.items()))
        shown = ", ".join(f"'{one_line(text) or 'no label'}' ({where.removeprefix(str(path)).strip()})"
                          for where, _, text in got[:3])
        more = f"; {len(several) - 1} more images have several answers too" if len(several) > 1 else ""
        raise DataError(f"{path}: {_name(pool, i)} has {len(got)} different answers: {shown}{more}; keep one "
                        "answer per image and import the file again")
    answers = {i: got[0][1] for i, got in given.items() if got[0][1] is not None}
    empty = sum(1 for got in given.values() if got[0][1] is None)
    if not answers:
        raise NoLabels(f"{path} has no labels (every label is empty); fill in the label column (a class name, or "
                       f"{'/'.join(SKIP_WORDS)}), then import it")
    return answers, empty


def _name(pool: _Pool, i: int) -> str:
    return f"'{one_line(pool.names[i])}'" if pool.names and i in pool.names else f"index {i}"


def _resolve(pool: _Pool, where: str, index: str | int | None, path_text: str | None) -> int:
    i = None
    if index is not None and str(index).strip() != "":
        text = str(index).strip()
        if isinstance(index, bool) or not (text.isascii() and text.isdigit()):  # int() takes '1_0' and '١'
            raise DataError(f"{where}: index '{one_line(text)}' is not a whole number (digits 0-9 only)")
        i = int(text)
        if not 0 <= i < pool.n:
            raise DataError(f"{where}: index {i} is not in the pool (0..{pool.n - 1})")
    if path_text is not None and path_text.strip() and pool.names is not None:
        j = pool.index_of_path(path_text)
        shown = one_line(path_text.strip())
        if j is None:
            raise DataError(f"{where}: '{shown}' is not {pool.what} (paths are relative to data.root, as in "
                            "queries.csv)")
        if i is not None and i != j:
            raise DataError(f"{where}: index {i} is not '{shown}' (that is index {j}); fix one of them")
        i = j
    if i is None:
        what = "an index or a path" if pool.names is not None else "an index (this pool has no file paths)"
        raise DataError(f"{where}: the row names no image; give {what}")
    return i


def _dialect(text: str) -> type[csv.Dialect]:
    """Comma, semicolon (spreadsheets in some locales) or tab: the one that splits the header into a 'label'
    column; read from the header alone, since file names in the rows may hold any of them."""
    header = (text.splitlines() or [""])[0].strip().lower()  # \n, \r\n or a Mac spreadsheet's \r
    for delimiter in (",", ";", "\t"):
        if "label" in [h.strip().strip('"') for h in header.split(delimiter)]:
            return type("Dialect", (csv.excel,), {"delimiter": delimiter})
    return csv.excel


def _csv_rows(path: Path, text: str, run_id: str | None) -> list[tuple[str, str | None, str | None, str]]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""), _dialect(text))
        header = next(reader, None)
        body = list(reader)
    except csv.Error as e:
        raise DataError(f"{path} is not a valid CSV file ({e}); export it again as CSV") from None
    if header is None:
        raise DataError(f"{path} is empty; give the filled-in queries.csv (or a CSV with path,label columns)")
    columns = [h.strip().lower() for h in header]
    if "label" not in columns or not ({"index", "path"} & set(columns)):
        raise DataError(f"{path} needs a header with a 'label' column and a 'path' or 'index' column (found: "
                        f"{', '.join(h.strip() for h in header) or 'nothing'}); start from queries.csv")
    col = {c: columns.index(c) for c in ("index", "path", "label", "run") if c in columns}
    rows = []
    for n, row in enumerate(body, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {n}"

        def cell(name: str, row=row) -> str | None:
            return row[col[name]] if name in col and col[name] < len(row) else None

        run = cell("run")
        if run_id is not None and run and run.strip() and run.strip() != run_id:
            raise DataError(f"{path} answers another run (run {run.strip()}; this run is {run_id}): import the "
                            "queries.csv of this run")
        rows.append((where, cell("index"), cell("path"), cell("label") or ""))
    return rows


def _label_studio_rows(path: Path, text: str, run_id: str | None
                       ) -> list[tuple[str, int | None, str | None, list[str]]]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); export it again from Label "
                        "Studio as JSON") from None
    except RecursionError:
        raise DataError(f"{path} is JSON nested too deeply to be a Label Studio export; export the project "
                        "again as JSON") from None
    if isinstance(tasks, dict) and ({"data", "ssal_index", "image", "path"} & tasks.keys()):
        tasks = [tasks]  # one task
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"{path} is not a Label Studio export (a JSON list of tasks); export it as JSON")
    rows = []
    for k, task in enumerate(tasks):
        where = f"{path} task {k + 1}"
        data = task.get("data") if isinstance(task.get("data"), dict) else task  # JSON or JSON-MIN export
        run = data.get("ssal_run")
        if run_id is not None and run and run != run_id:
            raise DataError(f"{path} answers another run (run {run}; this run is {run_id}): export and import the "
                            "tasks of this run")
        index = data.get("ssal_index")
        image = data.get("image") or data.get("path")
        if "data" in task:
            labels = _ls_choices(task, where)
        else:  # JSON-MIN: the choice under the control's name ('label' in ssal's config)
            labels = [_one_choice(task.get("label", ""), where)]
        if not labels:
            continue
        rows.append((where, index, image if isinstance(image, str) else None, labels))
    return rows


def _ls_choices(task: dict, where: str) -> list[str]:
    """Every annotation's choice ('skip' where an annotator skipped the task, '' for an empty submit); []
    when nobody annotated it. Several annotations that differ are refused by the caller."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    out = []
    for annotation in annotations:
        if annotation.get("was_cancelled"):
            out.append(SKIP_WORDS[0])
            continue
        results = annotation.get("result") or []
        if not isinstance(results, list):
            raise DataError(f"{where}: the annotation's result is not a list; export the project again as JSON")
        choices = []
        for r in results:
            if isinstance(r, dict) and r.get("type") == "choices":
                value = r.get("value")
                if not isinstance(value, dict):
                    raise DataError(f"{where}: a choice without a value object; export the project again as JSON")
                found = value.get("choices")
                choices += [found] if isinstance(found, str) else list(found or [])
        out.append(_one_choice(choices, where))
    return out


def _one_choice(value, where: str) -> str:
    """The single class of an answer given as a string, a list of choices or {"choices": [...]}."""
    if isinstance(value, dict):
        value = value.get("choices", [])
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(c, (str, int, float)) for c in value):
        raise DataError(f"{where}: the answer {value!r} is not a class name; export the project again")
    if len(value) > 1:
        raise DataError(f"{where}: the annotation chose {len(value)} classes ({', '.join(map(str, value))}); "
                        "choose one per image")
    return str(value[0]) if value else ""


def read_seed_labels(path: str | os.PathLike, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.labels``: (indices, labels) of a CSV of path,label (or index,label) for pool images."""
    root = data.train.files()[0] if data.train.files() is not None else None
    names = data.names()
    pool = _Pool(len(data.train), None if names is None else dict(enumerate(names)), list(data.classes), root,
                 "an image of the pool")
    try:
        answers, _ = read_answer_file(Path(os.path.expanduser(str(path))), pool)
    except DataError as e:
        raise DataError(f"data.labels: {e}") from None
    skipped = [i for i, y in answers.items() if y == SKIP]
    if skipped:
        raise DataError(f"data.labels: '{path}' says skip/unsure for {len(skipped)} images; a seed set holds labels "
                        "only: remove those rows")
    idx = torch.tensor(sorted(answers), dtype=torch.long)
    return idx, torch.tensor([answers[int(i)] for i in idx], dtype=torch.long)


# ----------------------------------------------------------------------------- the open batch of a run

def human_run(rd: RunDir, in_use_ok: bool = False) -> dict:
    """The identity of a run made with ``active.oracle=human``, or a one-line error. ``in_use_ok``: a run
    another process holds is fine (the labeling page waits for it, read-only)."""
    kind = rd.kind()
    if kind != "run":
        what = {"absent": "does not exist", "file": "is a file"}.get(kind, "is not a run directory (no run.json)")
        raise ConfigError(f"'{rd.path}' {what}; give the output_dir of a run made with active.oracle=human")
    try:
        identity = rd.check_resumable()
    except RunInUse:
        if not in_use_ok:
            raise
        identity = rd.identity()
    oracle = (identity["recipe"].get("active") or {}).get("oracle", "simulated")
    if oracle != "human":
        raise ConfigError(f"{rd.path} uses active.oracle={oracle}: its labels come from the data set, not from "
                          "people; start a run with active.oracle=human to label images")
    return identity


def open_batch(rd: RunDir, identity: dict) -> Batch:
    """The acquisition the run waits on, or a one-line error saying why nothing awaits labels."""
    rows = rd.committed()
    r = rows[-1]["round"] if rows else -1
    indices = rd.saved_selection(r)
    rounds = (identity["recipe"].get("active") or {}).get("rounds")
    if indices is None:
        if rows and r >= rounds:
            raise ConfigError(f"{rd.path} is complete ({len(rows)} rounds): it awaits no labels; 'ssal predict' "
                              "and 'ssal export' use its model")
        raise ConfigError(f"{rd.path} has no open query batch yet; continue it with 'ssal run --resume {rd.path}', "
                          "which writes the queries")
    try:
        entries = pool_entries(rd.load_pool(identity["pool"]["n"]))
    except files.Damaged:
        entries = set()  # no readable pool.json (the initial batch is open): nothing of the batch is in it
    if any(i in entries for i in indices):
        raise ConfigError(f"the batch of {rd.path}/{Batch(r, indices).folder} is already labeled and in the pool; "
                          f"continue with 'ssal run --resume {rd.path}'")
    return Batch(r, indices)


def batch_pool(rd: RunDir, identity: dict, batch: Batch) -> _Pool:
    """What answers to ``batch`` are checked against (and names its images in answers.json)."""
    record = rd.selection_record(batch.round)
    names = dict(zip(batch.indices, record["paths"], strict=True)) if "paths" in record else None
    root = (identity["recipe"].get("data") or {}).get("root")
    return _Pool(identity["pool"]["n"], names, list(identity["pool"]["classes"]),
                 Path(os.path.expanduser(root)) if root else None, f"one of the images queried in {batch.folder}")


class BatchChanged(ConfigError):
    """The open batch is not the one an answer was given for (the run went on, or another batch opened)."""


@dataclass
class Stored:
    """What :func:`update_answers` did: the batch, every stored answer, the answers given, how many changed."""

    batch: Batch
    answers: dict[int, int]
    given: int
    changed: int


def update_answers(rd: RunDir, identity: dict, source: str, given: Callable[[Batch, _Pool], dict[int, int | None]],
                   expect_round: int | None = None) -> Stored:
    """The one way answers reach a run (``ssal label import`` and the labeling page): under the run's lock,
    ``given(batch, pool)`` yields validated answers (index -> class, SKIP, or None to withdraw one) to the
    open batch; any answer to an image the batch did not query refuses them all (``source`` names where they
    came from); the merge with the stored answers is written atomically. ``expect_round``: refuse
    (:class:`BatchChanged`) if another batch is open."""
    for note in rd.lock(wait=TRANSACTION_WAIT, purpose="answers"):
        print(f"note: {note}")
    try:
        files.remove_stale_tmp(rd.path)  # of a killed import (the lock is held: no live writer)
        batch = open_batch(rd, identity)
        if expect_round is not None and batch.round != expect_round:
            raise BatchChanged(f"the open batch is {batch.folder} now, not the one answered; reload the page")
        return _store(rd, identity, batch, source, given)
    finally:
        rd.unlock()


def _store(rd: RunDir, identity: dict, batch: Batch, source: str,
           given: Callable[[Batch, _Pool], dict[int, int | None]]) -> Stored:
    """The transaction of :func:`update_answers`, its lock held (by it, or by the run itself)."""
    pool = batch_pool(rd, identity, batch)
    answers = given(batch, pool)
    queried = set(batch.indices)
    stray = sorted(i for i in answers if i not in queried)
    if stray:
        raise DataError(f"{source} labels {len(stray)} images that the open batch ({batch.folder}, "
                        f"{len(queried)} images) did not query, e.g. index {stray[0]}; answer only "
                        f"{batch.folder}/queries.csv")
    stored = rd.read_answers(batch.round)
    if not answers:
        return Stored(batch, stored, 0, 0)
    check_answered_images(rd, identity, batch, [i for i, y in answers.items() if y is not None])
    changed = sum(1 for i, y in answers.items() if i in stored and stored[i] != y)
    for i, y in answers.items():
        if y is None:
            stored.pop(i, None)
        else:
            stored[i] = y
    rd.save_answers(batch.round, stored, names=pool.names)  # answers.json names the images too
    return Stored(batch, stored, len(answers), changed)


def check_answered_images(rd: RunDir, identity: dict, batch: Batch, indices: list[int]) -> None:
    """The files of ``indices`` still hold the images the batch recorded when it was queried (a one-line
    error naming the first that changed: an answer is for what a person saw)."""
    record = rd.selection_record(batch.round)
    digests = record.get("digests")
    root = (identity["recipe"].get("data") or {}).get("root")
    if not indices or not isinstance(digests, list) or len(digests) != len(batch.indices) or root is None:
        return
    position = {i: k for k, i in enumerate(batch.indices)}
    names = dict(zip(batch.indices, record.get("paths") or [], strict=False))
    root = Path(os.path.expanduser(root))
    check_unchanged(indices, [digests[position[i]] for i in indices],
                    [files.file_identity(root / names[i]) for i in indices], names, f"{batch.folder}/selected.json")


def take_filled_queries(rd: RunDir, r: int) -> str | None:
    """Answers a person wrote into the run's own ``rounds/rXX/queries.csv`` (filled in place, instead of
    ``ssal label import``), stored by the run that holds the lock. Only images without a stored answer
    take one; a different stored answer is a one-line error. Returns what was taken, or None."""
    path = rd.round_dir(r) / "queries.csv"
    if not path.is_file():
        return None
    identity = rd.identity()
    batch = Batch(r, rd.read_selection(r))
    stored = rd.read_answers(r)
    taken = 0

    def read(batch: Batch, pool: _Pool) -> dict[int, int]:
        nonlocal taken
        try:
            answers, _ = read_answer_file(path, pool, rd.run_id())
        except NoLabels:
            return {}
        clash = next((i for i, y in answers.items() if i in stored and stored[i] != y), None)
        if clash is not None:
            raise DataError(f"{path} answers {_name(pool, clash)} with '{_label_name(pool, answers[clash])}', but "
                            f"the run holds the answer '{_label_name(pool, stored[clash])}' for it (from the labeling "
                            f"page or an import): to replace stored answers import the file ('ssal label import "
                            f"{rd.path} {path}'), or make the two agree")
        new = {i: y for i, y in answers.items() if i not in stored}
        taken = len(new)
        return new

    _store(rd, identity, batch, str(path), read)
    return f"took {taken} answers from {path}" if taken else None


def _label_name(pool: _Pool, y: int) -> str:
    return SKIP_WORDS[0] if y == SKIP else pool.classes[y]


def import_labels(run_dir: str | os.PathLike, label_file: str | os.PathLike) -> str:
    """Validate ``label_file`` against the open batch of a run and store its answers (all or nothing).
    Returns what happened, for people."""
    rd = RunDir(run_dir)
    identity = human_run(rd)
    empty = 0

    def read(batch: Batch, pool: _Pool) -> dict[int, int]:
        nonlocal empty
        answers, empty = read_answer_file(label_file, pool, rd.run_id())
        return answers

    done = update_answers(rd, identity, str(label_file), read)
    queried = done.batch.indices
    missing = sum(1 for i in queried if i not in done.answers)
    skipped = sum(1 for i in queried if done.answers.get(i) == SKIP)
    head = (f"imported {done.given} answer{'s' if done.given != 1 else ''} for {done.batch.folder}" +
            (f" ({done.changed} changed)" if done.changed else "") +
            (f", {skipped} skipped" if skipped else "") + (f"; {empty} rows had no label" if empty else ""))
    if missing:
        return f"{head}; {missing} of {len(queried)} images still await labels"
    return f"{head}; all {len(queried)} answered: continue with 'ssal run --resume {rd.path}'"


# ----------------------------------------------------------------------------- the queries people see

def queries_csv(indices: list[int], names: list[str] | None, suggestions: list[str], confidences: list[float | None],
                run_id: str) -> bytes:
    rows = ([q, i, names[i] if names else "", suggestions[q - 1], "" if conf is None else f"{conf:.3f}", "", run_id]
            for q, (i, conf) in enumerate(zip(indices, confidences, strict=True), start=1))
    return files.csv_text(QUERY_COLUMNS, rows).encode()


def contact_sheet(thumbnails: list, captions: list[str], size: int = 128, columns: int = 10) -> bytes:
    """A PNG grid of ``thumbnails`` (PIL images) with their ``captions`` (query number, suggestion)."""
    from PIL import Image, ImageDraw

    rows = max(1, -(-len(thumbnails) // columns))
    cell_h = size + 16
    sheet = Image.new("RGB", (columns * size, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (im, caption) in enumerate(zip(thumbnails, captions, strict=True)):
        x, y = (k % columns) * size, (k // columns) * cell_h
        im = im.convert("RGB")
        scale = (size - 4) / max(im.width, im.height)  # small images (28 px) are enlarged to be seen
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.NEAREST if scale > 1 else Image.LANCZOS)
        sheet.paste(im, (x + (size - im.width) // 2, y + (size - im.height) // 2))
        draw.text((x + 3, y + size + 1), caption[:22], fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def thumbnails(split, indices: list[int]) -> list:
    """PIL images of ``split[indices]``: the original files when there are any, else the tensors."""
    from PIL import Image
    from torchvision.transforms.functional import to_pil_image

    got = split.files()
    if got is not None:
        root, names = got
        out = []
        for i in indices:
            with Image.open(root / names[i]) as im:
                im.draft("RGB", (256, 256))
                out.append(im.convert("RGB").copy())
        return out
    return [to_pil_image(x) for x in split.load(torch.tensor(indices, dtype=torch.long))]


# ----------------------------------------------------------------------------- Label Studio

def label_studio_config(classes: list[str]) -> str:
    choices = "\n".join(f'    <Choice value="{_xml(c)}"/>' for c in classes)
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="label" toName="image" '
            f'choice="single" showInline="true">\n{choices}\n  </Choices>\n</View>\n')


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _is_tasks(path: Path) -> bool:
    try:
        tasks = json.loads(path.read_bytes().decode())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(tasks, list) and bool(tasks) and all(isinstance(t, dict) and isinstance(t.get("data"), dict)
                                           and "ssal_run" in t["data"] for t in tasks)


TASKS = Output("a Label Studio task file of 'ssal label export'", _is_tasks)
LS_CONFIG = Output("a Label Studio labeling config of 'ssal label export'",
                   starts_with(b'<View>\n  <Image name="image" value="$image"/>\n'))
QUERIES = Output("a queries CSV of ssal", starts_with(",".join(QUERY_COLUMNS).encode() + b"\r\n"))


def export_queries(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None,
                   force: bool = False) -> tuple[list[Path], int]:
    """The open batch for a labeling tool: Label Studio tasks (``out``, default ``rounds/rXX/tasks.json``)
    and their labeling config (``out`` with .xml), or ssal's queries CSV (default: the run's own
    ``queries.csv``, which exists already). Into the run directory only under its lock; anywhere else
    only where :mod:`ssal.outputs` allows. Returns (files written or named, images)."""
    rd = RunDir(run_dir)
    identity = human_run(rd)
    folders = data_folders(identity["recipe"])
    if out is not None:
        out = Path(os.path.expanduser(str(out)))
        if fmt == "labelstudio" and out.suffix.lower() == ".xml":
            raise ConfigError(f"--out '{out}' names the task file, and its labeling config goes beside it with "
                              "the suffix .xml: give a .json name (e.g. tasks.json)")
        check_file(out, TASKS if fmt == "labelstudio" else QUERIES, force, folders)
        if fmt == "labelstudio":
            check_file(out.with_suffix(".xml"), LS_CONFIG, force, folders, what="--out (its .xml config)")
    for note in rd.lock():
        print(f"note: {note}")
    try:
        batch = open_batch(rd, identity)
        folder = rd.round_dir(batch.round)
        if fmt == "csv":
            src = folder / "queries.csv"
            if out is not None:
                files.write_bytes(out, src.read_bytes())
            return [out or src], len(batch.indices)
        out = out or folder / "tasks.json"
        tasks = _label_studio_tasks(rd, identity, batch)
        files.write_text(out, json.dumps(tasks, indent=1) + "\n")
        files.write_text(out.with_suffix(".xml"), label_studio_config(list(identity["pool"]["classes"])))
        return [out, out.with_suffix(".xml")], len(tasks)
    finally:
        rd.unlock()


def _label_studio_tasks(rd: RunDir, identity: dict, batch: Batch) -> list[dict]:
    record = rd.selection_record(batch.round)
    run_id = rd.run_id()
    tasks = []
    for q, i in enumerate(batch.indices, start=1):
        data = {"ssal_index": i, "ssal_run": run_id, "query": q}
        if "paths" in record:  # a reference is a URL: '%20', '#' or '+' in a name must name that file
            data["image"] = LS_PREFIX + urllib.parse.quote(record["paths"][q - 1], safe="/")
            data["path"] = record["paths"][q - 1]
        task = {"data": data}
        label = (record.get("suggestions") or [""] * len(batch.indices))[q - 1]
        conf = (record.get("confidences") or [None] * len(batch.indices))[q - 1]
        if label:
            task["predictions"] = [{"model_version": f"ssal {batch.folder}", "score": conf, "result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}]
        tasks.append(task)
    return tasks


def pool_entries(pool: ActivePool) -> set[int]:
    return {i for i, _, _ in pool.state_dict()["labeled"]}
