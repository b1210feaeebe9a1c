"""Label files: the CSV and Label Studio exports people answer with, and ``data.labels``, parsed (pure).

A file names images of the pool (by path, as ssal's queries.csv wrote it, as a Label Studio reference or
as an absolute path) and gives each a class or "skip"/"unsure". Every parser here turns a malformed
file into one :class:`~ssal.errors.DataError` line that names the file, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from ssal import files
from ssal.data.pool import SKIP
from ssal.errors import DataError, closest, one_line

SKIP_WORDS = ("skip", "unsure")
QUERY_COLUMNS = ("query", "index", "path", "suggestion", "confidence", "label", "run")
LS_PREFIX = "/data/local-files/?d="  # how Label Studio serves local files



@dataclass
class PoolNames:
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
        below = f"{self.root.name}/" if self.root is not None else None  # Label Studio's URLs (document root:
        for p in dict.fromkeys((files.csv_plain(raw), raw, files.csv_plain(raw.strip()), raw.strip())):  # its parent)
            served = p.startswith(LS_PREFIX)
            if served:
                p = urllib.parse.unquote(p[len(LS_PREFIX):])
            if self.root is not None and os.path.isabs(p):
                p = os.path.relpath(p, self.root)
            p = os.path.normpath(p).replace(os.sep, "/") if p else p
            if p in self.by_path:
                return self.by_path[p]
            if served and below and p.startswith(below) and p[len(below):] in self.by_path:
                return self.by_path[p[len(below):]]
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


RULES = ("refuse", "agree", "majority", "latest")  # several answers for one image (annotators): which counts


@dataclass
class Answers:
    """A label file's answers: ``labels`` {index: class or SKIP}, ``empty`` images whose every answer is
    empty, and ``open`` {index: the answers as written} whose answers the rule could not settle."""

    labels: dict[int, int]
    empty: int
    open: dict[int, list[str]]


def settle(got: list[tuple[int, str, int]], rule: str) -> int | None:
    """The answer ``rule`` takes from one image's answers ``(label, time, position)``, empty submits already
    left out: ``agree`` only a unanimous one, ``majority`` one given more often than any other, ``latest``
    the last by time (then by position). None: not settled (the image stays open)."""
    labels = [label for label, _, _ in got]
    if len(set(labels)) == 1:
        return labels[0]
    if rule == "majority":
        counts = sorted(((labels.count(y), y) for y in set(labels)), reverse=True)
        return counts[0][1] if counts[0][0] > counts[1][0] else None
    if rule == "latest":
        return max(got, key=lambda a: (a[1], a[2]))[0]
    return None


def read_answer_file(path: str | os.PathLike, pool: PoolNames, run_id: str | None = None,
                     rule: str | None = None) -> Answers:
    """The answers of a CSV or Label Studio JSON file. Several different answers for one image (rows, or
    annotators) refuse the file naming them (``rule`` None or ``refuse``; ``refuse`` names the other rules
    too) unless ``rule`` (:data:`RULES`) settles them; under a rule an empty submit beside a real answer
    never counts."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        rows = _label_studio_rows(path, text, run_id)
    else:
        rows = _csv_rows(path, text, run_id)
    given: dict[int, list[tuple[str, int | None, str, str]]] = {}  # index -> (where, label or None, text, time)
    for where, index, path_text, answers in rows:
        i = _resolve(pool, where, index, path_text)
        for label_text, stamp in answers:
            given.setdefault(i, []).append((where, pool.label_of(label_text, where), label_text.strip(), stamp))
    if rule in (None, "refuse"):
        _refuse_several(path, pool, given, rule == "refuse")
    labels, empty, still = {}, 0, {}
    for i, got in given.items():
        real = [(label, stamp, k) for k, (_, label, _, stamp) in enumerate(got) if label is not None]
        if not real:
            empty += 1
            continue
        settled = settle(real, "agree" if rule in (None, "refuse") else rule)
        if settled is None:
            still[i] = [text for _, label, text, _ in got if label is not None]
        else:
            labels[i] = settled
    if not labels and not still:
        raise NoLabels(f"{path} has no labels (every label is empty); fill in the label column (a class name, or "
                       f"{'/'.join(SKIP_WORDS)}), then import it")
    return Answers(labels, empty, still)


def _refuse_several(path: Path, pool: PoolNames, given: dict[int, list[tuple[str, int | None, str, str]]],
                    rules: bool) -> None:
    several = {i: got for i, got in given.items() if len({label for _, label, _, _ in got}) > 1}
    if several:  # one image, different answers (two rows, or several annotators): ssal will not pick one
        i, got = next(iter(several.items()))
        shown = ", ".join(f"'{one_line(text) or 'no label'}' ({where.removeprefix(str(path)).strip()})"
                          for where, _, text, _ in got[:3])
        more = f"; {len(several) - 1} more images have several answers too" if len(several) > 1 else ""
        rule = f" (several annotators: choose which answer counts with --annotators {'|'.join(RULES[1:])})"
        raise DataError(f"{path}: {image_name(pool, i)} has {len(got)} different answers: {shown}{more}; keep one "
                        f"answer per image and import the file again{rule if rules else ''}")


def image_name(pool: PoolNames, i: int) -> str:
    return f"'{one_line(pool.names[i])}'" if pool.names and i in pool.names else f"index {i}"


def _resolve(pool: PoolNames, where: str, index: str | int | None, path_text: str | None) -> int:
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


def _csv_rows(path: Path, text: str, run_id: str | None) -> list[tuple[str, str | None, str | None, list]]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""), _dialect(text))
        header = next(reader, None)
        body = list(reader)
    except csv.Error as e:
        raise DataError(f"{path} is not a valid CSV file ({e}); export it again as CSV") from None
    if header is None:
        raise DataError(f"{path} is empty; give the filled-in queries.csv (or a CSV with path,label columns)")
    # Label Studio's CSV export names ssal's task fields ssal_index and ssal_run (and the image URL 'image')
    aliases = {"ssal_index": "index", "ssal_run": "run"}
    columns = [aliases.get(h.strip().lower(), h.strip().lower()) for h in header]
    if "label" not in columns or not ({"index", "path"} & set(columns)):
        raise DataError(f"{path} needs a header with a 'label' column and a 'path' or 'index' column (found: "
                        f"{', '.join(h.strip() for h in header) or 'nothing'}); start from queries.csv")
    col = {c: columns.index(c) for c in ("index", "path", "label", "run", "updated_at") if c in columns}
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
        rows.append((where, cell("index"), cell("path"), [(cell("label") or "", cell("updated_at") or "")]))
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
        # ssal's own fields name the image; the URL only when they are missing (Label Studio serves a
        # local file under its storage's path, so a project may rewrite the URLs ssal wrote)
        own = data.get("path") if isinstance(data.get("path"), str) else None
        image = own if own is not None or index is not None else data.get("image")
        if "data" in task:
            labels = _ls_choices(task, where)
        else:  # JSON-MIN: one row per annotation, the choice under the control's name ('label' in ssal's config)
            labels = [(_one_choice(task.get("label", ""), where), _stamp(task))]
        if not labels:
            continue
        rows.append((where, index, image if isinstance(image, str) else None, labels))
    return rows


def _stamp(annotation: dict) -> str:
    """When an annotation was last changed (ISO 8601 as Label Studio writes it), or ''."""
    stamp = annotation.get("updated_at") or annotation.get("created_at") or ""
    return stamp if isinstance(stamp, str) else ""


def _ls_choices(task: dict, where: str) -> list[tuple[str, str]]:
    """Every annotation's choice ('skip' where an annotator skipped the task, '' for an empty submit) with its
    time; [] when nobody annotated it. Several annotations that differ are for the caller's rule."""
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    out = []
    for annotation in annotations:
        if annotation.get("was_cancelled"):
            out.append((SKIP_WORDS[0], _stamp(annotation)))
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
        out.append((_one_choice(choices, where), _stamp(annotation)))
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
    pool = PoolNames(len(data.train), None if names is None else dict(enumerate(names)), list(data.classes), root,
                 "an image of the pool")
    try:
        answers = read_answer_file(Path(os.path.expanduser(str(path))), pool).labels
    except DataError as e:
        raise DataError(f"data.labels: {e}") from None
    skipped = [i for i, y in answers.items() if y == SKIP]
    if skipped:
        raise DataError(f"data.labels: '{path}' says skip/unsure for {len(skipped)} images; a seed set holds labels "
                        "only: remove those rows")
    idx = torch.tensor(sorted(answers), dtype=torch.long)
    return idx, torch.tensor([answers[int(i)] for i in idx], dtype=torch.long)
