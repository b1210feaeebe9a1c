"""Every image of a folder data set is checked to decode before a run starts.

A corrupt or truncated file is otherwise found when it is first decoded, minutes into a run, after
the run directory is written (or never, by a strategy that does not look at it). Each file is
opened and decoded — at a reduced scale where the format allows it (JPEG's DCT scaling), which
keeps photos cheap — on a thread pool (PIL's decoders release the GIL). The files that passed are
remembered in ``<cache_dir>/imagecheck/<digest of the folder>.json`` by relative path, size and
modification time, so a second run decodes only what changed (figures: docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ssal import files
from ssal.errors import DataError

FORMAT = 1
CHUNK = 64  # files per thread-pool task
DRAFT_SIDE = 64  # decode at no less than this side: enough to read every block of the file


def _check_one(path: Path) -> str | None:
    """None if ``path`` decodes, else why not."""
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (DRAFT_SIDE, DRAFT_SIDE))
            im.load()
        return None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return str(e).splitlines()[0] if str(e) else type(e).__name__


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _cache_file(cache_dir: str | None, root: Path) -> Path | None:
    if cache_dir is None:
        return None
    return Path(os.path.expanduser(cache_dir)) / "imagecheck" / f"{files.digest(str(root.resolve()).encode())}.json"


def _remembered(cache: Path | None) -> dict[str, list[int]]:
    if cache is None:
        return {}
    try:
        data = files.read_sealed_json(cache)
    except files.Damaged:
        return {}
    return data.get("files", {}) if data.get("format") == FORMAT else {}


def check_images(root: Path, relpaths: list[str], cache_dir: str | None, workers: int | None = None
                 ) -> Callable[[], None]:
    """Decode every file not remembered as good; raise :class:`DataError` (one line, the first few bad
    files) if any fails. Returns a function that remembers the good files (call it when the run goes
    ahead; it writes nothing before, so that a failed run changes nothing on disk)."""
    cache = _cache_file(cache_dir, root)
    known = _remembered(cache)
    stats = {rel: _stat(root / rel) for rel in relpaths}
    todo = [rel for rel in relpaths if stats[rel] is None or known.get(rel) != stats[rel]]
    bad: list[tuple[str, str]] = []
    if todo:
        chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]  # per-task overhead > a small decode
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for chunk, problems in zip(chunks, pool.map(lambda c: [_check_one(root / r) for r in c], chunks),
                                       strict=True):
                bad += [(rel, problem) for rel, problem in zip(chunk, problems, strict=True) if problem is not None]
    if bad:
        shown = ", ".join(f"{rel} ({why})" for rel, why in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{len(bad)} of {len(relpaths)} images in {root} cannot be decoded: {shown}{more}; "
                        "remove or replace them")

    def remember() -> None:
        if cache is None or not todo:
            return
        with contextlib.suppress(files.StorageError):  # only a cache: a run never fails for it
            files.mkdirs(cache.parent)
            files.write_json(cache, files.seal({"format": FORMAT, "root": str(root.resolve()),
                                                "files": {**known, **{rel: stats[rel] for rel in todo}}}))

    return remember
