"""The run directory's lock: an exclusive ``flock`` that one process holds while it runs the directory, or
for the milliseconds of one labeling transaction, and that says who holds it. A comparison folder is
locked the same way while ``ssal compare`` runs it."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ssal import files
from ssal.errors import SsalError


class RunInUse(SsalError):
    """Another live process holds the run directory's lock."""


class Lock:
    """An exclusive ``flock`` on ``.lock`` for the life of a run (or of one labeling transaction). The
    kernel drops it when the process dies (kill -9 included), so a lock is never stale in effect; the
    file names its holder while it is held and is removed when it is released, so a clean stop leaves
    nothing behind. A name left by a dead process is reported when the lock is taken over.

    Removing a lock file that others may be waiting on is safe because a taker checks, once it holds
    the lock, that the file it locked is still the one at the path (else it takes the new one)."""

    SETTLE = 0.5  # seconds a taker retries: a holder() probe holds the lock for microseconds

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def holder(self) -> str | None:
        """Who holds the lock now (a description), or None when it is free. Changes nothing on disk."""
        deadline = time.monotonic() + 0.25
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                who = _describe(os.pread(fd, 4096, 0))
                if who is not None or time.monotonic() > deadline:  # a new holder writes its name at once
                    return who or "a process that did not say who it is"
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            finally:
                os.close(fd)
            time.sleep(0.01)

    def acquire(self, wait: float = 0.0, purpose: str = "run") -> str | None:
        """Take the lock for ``purpose`` ("run", or "answers": a labeling transaction of milliseconds), or
        raise :class:`RunInUse`. A holder is waited for :attr:`SETTLE` seconds, and up to ``wait`` seconds
        while it is a labeling transaction (never a run's hours). Returns a note when a dead holder's name
        was found."""
        start = time.monotonic()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise files.storage_error(e, self.path, "create") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                brief = _purpose(os.pread(fd, 4096, 0)) == "answers"
                os.close(fd)
                if time.monotonic() - start < (max(wait, self.SETTLE) if brief else self.SETTLE):
                    time.sleep(0.02)
                    continue
                who = self.holder() or "a process that has just stopped"
                raise RunInUse(f"{self.path.parent} is in use by another ssal process ({who}); wait for it to "
                               "finish, or stop it, then try again") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed the file while we waited: take the one at the path now
        previous = os.pread(fd, 4096, 0)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": timestamp(), "command": " ".join(sys.argv),
              "purpose": purpose}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise files.storage_error(e, self.path) from None
        self.fd = fd
        _HELD.add(self)
        if not previous.strip():
            return None
        return f"took over the lock of {_describe(previous) or 'an unknown process'}, which is no longer running"

    def release(self) -> None:
        _HELD.discard(self)
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # still held: a taker that opened it finds it gone and retries
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_HELD: set[Lock] = set()


def _forget_locks_in_child() -> None:
    """A forked child (a data-loader worker) must not keep the run locked after its parent died."""
    for lock in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(lock.fd)
        lock.fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def timestamp() -> str:
    """The local time to the second, as the lock and run.json record it."""
    return datetime.datetime.now().isoformat(timespec="seconds")


def _purpose(raw: bytes) -> str | None:
    try:
        return json.JSONDecoder().raw_decode(raw.decode())[0].get("purpose")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def _describe(raw: bytes) -> str | None:
    """The holder a lock file names, or None when it names nobody (empty, or being written)."""
    try:
        info, _ = json.JSONDecoder().raw_decode(raw.decode())  # an older, longer name may follow a new one
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None

