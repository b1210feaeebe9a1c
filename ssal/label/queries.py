"""The queries people see: ``queries.csv`` and its contact sheet, and the Label Studio export of the open
batch (``ssal label export``)."""

from __future__ import annotations

import io
import json
import os
import urllib.parse
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import to_pil_image

from ssal import files
from ssal.data.label_files import LS_PREFIX, QUERY_COLUMNS
from ssal.errors import ConfigError
from ssal.label.answers import TRANSACTION_WAIT, Batch, human_run, open_batch
from ssal.run.outputs import Output, check_file, data_folders, starts_with
from ssal.run.store import RunDir
from ssal.run.transaction import Transaction


def queries_csv(indices: list[int], names: list[str] | None, suggestions: list[str], confidences: list[float | None],
                run_id: str) -> bytes:
    rows = ([q, i, names[i] if names else "", suggestions[q - 1], "" if conf is None else f"{conf:.3f}", "", run_id]
            for q, (i, conf) in enumerate(zip(indices, confidences, strict=True), start=1))
    return files.csv_text(QUERY_COLUMNS, rows).encode()


def contact_sheet(thumbnails: list, captions: list[str], size: int = 128, columns: int = 10) -> bytes:
    """A PNG grid of ``thumbnails`` (PIL images) with their ``captions`` (query number, suggestion)."""
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
    only where :mod:`ssal.run.outputs` allows. Returns (files written or named, images)."""
    rd = RunDir(run_dir)
    identity = human_run(rd, in_use_ok=True)
    folders = data_folders(identity["recipe"])
    if out is not None:
        out = Path(os.path.expanduser(str(out)))
        if fmt == "labelstudio" and out.suffix.lower() == ".xml":
            raise ConfigError(f"--out '{out}' names the task file, and its labeling config goes beside it with "
                              "the suffix .xml: give a .json name (e.g. tasks.json)")
        check_file(out, TASKS if fmt == "labelstudio" else QUERIES, force, folders)
        if fmt == "labelstudio":
            check_file(out.with_suffix(".xml"), LS_CONFIG, force, folders, what="--out (its .xml config)")
    with rd.transaction(purpose="answers", wait=TRANSACTION_WAIT, clean=False) as tx:
        for note in tx.notes:
            print(f"note: {note}")
        batch = open_batch(tx, identity)
        if fmt == "csv":
            src = rd.queries_csv(batch.round)
            if out is not None:
                files.write_bytes(out, src.read_bytes())
            return [out or src], len(batch.indices)
        out = out or rd.tasks_json(batch.round)
        tasks = _label_studio_tasks(tx, identity, batch)
        tx.write_text(out, json.dumps(tasks, indent=1) + "\n")
        tx.write_text(out.with_suffix(".xml"), label_studio_config(list(identity["pool"]["classes"])))
        return [out, out.with_suffix(".xml")], len(tasks)


def label_studio_batch(run_dir: str | os.PathLike) -> tuple[list[dict], str, str, dict]:
    """The open batch as Label Studio tasks, their labeling config, the batch's folder (``rounds/rXX``) and
    the run's identity, read under the answers' lock; nothing written."""
    rd = RunDir(run_dir)
    identity = human_run(rd, in_use_ok=True)
    with rd.transaction(purpose="answers", wait=TRANSACTION_WAIT, clean=False) as tx:
        batch = open_batch(tx, identity)
        tasks = _label_studio_tasks(tx, identity, batch)
    return tasks, label_studio_config(list(identity["pool"]["classes"])), batch.folder, identity


def storage_root(identity: dict) -> Path | None:
    """The folder of Label Studio's Local Files storage: ``data.root`` (None without one, or at the file
    system's root). Label Studio serves a file only under a storage and refuses a storage at its document
    root itself, so its document root must be this folder's parent."""
    root = (identity["recipe"].get("data") or {}).get("root")
    if not root:
        return None
    root = Path(os.path.expanduser(root)).resolve()
    return root if root.parent != root else None


def label_studio_url(root: Path, path: str) -> str:
    """The URL Label Studio serves ``path`` (relative to ``data.root``, ``root``) under: relative to its
    document root, the parent of :func:`storage_root`; a reference is a URL, so '%20', '#' or '+' in a name
    name that file."""
    return LS_PREFIX + urllib.parse.quote(f"{root.name}/{path}", safe="/")


def model_version(tasks_path: Path) -> str | None:
    """The model version of the suggestions in a task file ``ssal label export`` wrote (None: none)."""
    for task in json.loads(Path(tasks_path).read_text()):
        for prediction in task.get("predictions") or []:
            return prediction.get("model_version")
    return None


def _label_studio_tasks(rd: RunDir | Transaction, identity: dict, batch: Batch) -> list[dict]:
    record = rd.selection_record(batch.round)
    run_id = rd.run_id()
    root = storage_root(identity)
    tasks = []
    for q, i in enumerate(batch.indices, start=1):
        data = {"ssal_index": i, "ssal_run": run_id, "query": q}
        if "paths" in record and root is not None:
            data["image"] = label_studio_url(root, record["paths"][q - 1])
            data["path"] = record["paths"][q - 1]
        task = {"data": data}
        label = (record.get("suggestions") or [""] * len(batch.indices))[q - 1]
        conf = (record.get("confidences") or [None] * len(batch.indices))[q - 1]
        if label:
            task["predictions"] = [{"model_version": f"ssal {batch.folder}", "score": conf, "result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}]
        tasks.append(task)
    return tasks
