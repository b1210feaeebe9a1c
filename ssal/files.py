"""Files that survive a crash, and that say when they are damaged.

Every file ssal writes goes through :func:`write_atomic`: the bytes go to a temporary file next to
the target (``.<name>.<pid>.<random>.tmp``), are flushed to disk (fsync), and the file is renamed
over the target; then the folder is synced so that the rename survives a power cut too. A reader
sees the old content or the new, never a mix. A write that fails (disk full, permission denied, a
read-only file system) removes its temporary file, leaves the old file as it was and raises
:class:`StorageError`, which the command line prints as one line. Temporary files of a process
that was killed mid-write are removed by :func:`remove_stale_tmp` at the next start.

State files carry what is needed to verify them: JSON state is *sealed* with a checksum of its
canonical form (:func:`seal` / :func:`read_sealed_json`), tensors with :func:`tensor_checksum`.
A file that is missing, unreadable or fails its check raises :class:`Damaged`, which the caller
turns into a repair or a one-line error.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
import yaml

from ssal.errors import ConfigError, SsalError
from ssal.faults import failpoint

TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<name>.<pid>.<random>.tmp
_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota)",
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOENT: "its folder does not exist: create it first, or choose another path",
}


class StorageError(SsalError):
    """A file could not be written: disk full, no permission, a read-only file system, ..."""


class Damaged(Exception):
    """A state file is missing, unreadable or fails its checksum; ``reason`` says which."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def storage_error(e: OSError, path: str | os.PathLike, verb: str = "write") -> StorageError:
    what = (e.strerror or type(e).__name__).lower()
    return StorageError(f"cannot {verb} '{path}': {what}; {_HINTS.get(e.errno, 'check the disk')}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where folders cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` with ``write(file)`` so that a crash or a full disk never leaves a partial file."""
    path = Path(path)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        failpoint(f"write:{path.name}")  # a test can crash here: the old file stays, the tmp file is stale
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise storage_error(e, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_advisory(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` whole (a reader never sees half of it) but without waiting for the disk: for files
    that say what a process is doing (progress.json, written about once a second), which a crash may lose
    and whose readers take their absence in stride. Two fsyncs per write cost a human run's tests a
    quarter of their time."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def dumps(obj: Any) -> str:
    """JSON with no NaN or Infinity (which are not JSON): a non-finite number is a bug upstream."""
    return json.dumps(obj, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps(obj))


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through memory: torch reports a full disk as a RuntimeError about zip positions,
    a plain write says ENOSPC."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, lambda f: f.write(buf.getbuffer()))


def writable_problem(path: str | os.PathLike) -> str | None:
    """Why a folder could not be made or written at ``path`` (None: it could). Leaves the disk as it was.

    The nearest existing folder is probed with a real (empty, removed at once) folder: permission bits
    say nothing for root, nor for /proc, a read-only mount or a full quota."""
    path = Path(os.path.expanduser(str(path)))
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                return f"'{parent}' is a file"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"'{parent}' is not writable"
            try:
                os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".ssal-probe."))
            except OSError as e:
                return f"'{parent}' cannot be written ({(e.strerror or type(e).__name__).lower()})"
            return None
    return None


def mkdirs(path: str | os.PathLike) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, path, "create") from None


def file_digest(path: str | os.PathLike) -> str:
    """A checksum of a file's bytes (what an image *is*, whatever its name): :func:`digest` of them."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> str:
    """:func:`file_digest`, or why the file cannot be read (which never equals a digest)."""
    try:
        return file_digest(path)
    except OSError as e:
        return f"unreadable ({(e.strerror or type(e).__name__).lower()})"


# ----------------------------------------------------------------------------- CSV for people

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV injection"):
# '=HYPERLINK(...)' in a file name would be a live link in queries.csv.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_plain(cell: str) -> str:
    """The text a cell written by :func:`csv_safe` stands for (its protecting apostrophe removed)."""
    if len(cell) > 1 and cell[0] == "'" and (cell[1] in _FORMULA_START or cell[1] == "'"):
        return cell[1:]
    return cell


def csv_safe(value: Any) -> str:
    """``value`` as a CSV cell that a spreadsheet shows as text: a string that would start a formula
    gets a leading apostrophe (a number stays a number); :func:`csv_plain` gives the string back."""
    text = str(value)
    if not isinstance(value, str) or not text:
        return text
    if (text[0] in _FORMULA_START and not _NUMBER.fullmatch(text)) or csv_plain(text) != text:
        return "'" + text
    return text


def csv_text(header: list[str] | tuple[str, ...], rows: Any) -> str:
    """A CSV file (excel dialect, ``\\r\\n`` lines) whose every text cell is :func:`csv_safe`."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow([csv_safe(h) for h in header])
    for row in rows:
        w.writerow([csv_safe(v) for v in row])
    return text.getvalue()


# ----------------------------------------------------------------------------- checksums

def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def json_digest(obj: Any) -> str:
    """A checksum of ``obj``'s canonical JSON (sorted keys, no whitespace)."""
    return digest(json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def seal(obj: dict) -> dict:
    """``obj`` with a ``checksum`` of the rest of it."""
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return {**body, "checksum": json_digest(body)}


def unseal(obj: Any, path: Path) -> dict:
    """The body of a sealed object, or :class:`Damaged` when the checksum is absent or wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("checksum"), str):
        raise Damaged(path, "no checksum (not written by this version of ssal, or damaged)")
    body = {k: v for k, v in obj.items() if k != "checksum"}
    if json_digest(body) != obj["checksum"]:
        raise Damaged(path, "checksum mismatch (the file was changed or damaged)")
    return body


def read_json(path: str | os.PathLike) -> Any:
    """Parsed JSON, or :class:`Damaged` (missing, unreadable, not UTF-8, not JSON)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise Damaged(path, "missing") from None
    except IsADirectoryError:
        raise Damaged(path, "a folder, not a file") from None
    except OSError as e:
        raise Damaged(path, f"unreadable ({e.strerror})") from None
    except UnicodeDecodeError:
        raise Damaged(path, "not text (garbage bytes)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Damaged(path, f"not valid JSON (line {e.lineno}: {e.msg}; truncated?)") from None
    except RecursionError:
        raise Damaged(path, "not a state file (JSON nested too deeply)") from None


def read_sealed_json(path: str | os.PathLike) -> dict:
    return unseal(read_json(path), Path(path))


def tensor_checksum(state: dict) -> str:
    """A checksum of a (nested) dict of tensors and plain values, independent of dict order."""
    h = hashlib.blake2b(digest_size=16)

    def feed(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                feed(f"{prefix}/{k}", value[k])
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{prefix}={value!r}".encode())

    feed("", state)
    return h.hexdigest()


def remove_stale_tmp(folder: str | os.PathLike, only_dead: bool = False) -> list[Path]:
    """Delete the temporary files of killed writes under ``folder``. ``only_dead``: only those whose
    writer process is gone (for folders that live processes may share, like the cache)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f".*{TMP_SUFFIX}"):
        m = _TMP_NAME.match(p.name)
        if m is None or not p.is_file():
            continue
        if only_dead and _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """The content of a YAML file; a one-line :class:`ConfigError` when it is missing, unreadable, not
    YAML, or sets a key twice (YAML keeps the last silently, which drops a whole block)."""
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} file '{path}' not found; check the path" +
                          (" (recipes live in recipes/)" if what == "recipe" else ""))
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} '{path}' is not a text file (not UTF-8); give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} '{path}': {e.strerror}") from None
    try:
        _check_duplicate_keys(yaml.compose(text), f"{what} '{path}'")
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{what} '{path}' nests its values too deeply to be a {what}; give a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} '{path}' is not valid YAML:{where}: {problem}") from None


def _check_duplicate_keys(node: Any, where: str, prefix: str = "", seen: set | None = None) -> None:
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias repeats a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(f"{where} sets '{prefix}{key}' twice (lines {lines[key]} and {line}); YAML would "
                                      "keep only the second: merge them into one")
                lines[key] = line
            _check_duplicate_keys(value_node, where, f"{prefix}{key}.", seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, where, f"{prefix}{i}.", seen)
