"""Folders of images, walked so that what a person points ssal at is what becomes the pool.

:func:`walk_images` visits every real folder and file under a root once: it follows a link only
when its target lies under the root and was not reached before (a link back into the root or to
a folder already walked would repeat the same images, ``self -> .`` forever), never a link out
of it (``up -> ..`` would pull in the rest of the disk), and stops at :data:`MAX_ENTRIES` entries.
Hidden entries (names starting with ``.``: ``.thumbs/``, macOS ``._img.png``), files that are not
images by their extension, second names of an image already found (links, hard links) and links
that go nowhere are left out, and :meth:`Found.note` says so in one line.

Written by hand: ``os.walk(followlinks=True)`` has no loop or boundary check, and torchvision's
``ImageFolder`` walks with it.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ssal.errors import DataError, one_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
MAX_ENTRIES = 5_000_000  # files and folders visited under one root (ImageNet's train split: 1.3 M files)

# why an entry is left out, in the order a note lists them
HIDDEN = "hidden entries (names starting with '.')"
NOT_IMAGE = "files that are not images (by their extension)"
OUTSIDE = "links out of the folder"
INTO_SKIPPED = "links into the test folder"
LOOP = "links to a folder already walked (loops, second paths)"
SECOND_NAME = "second names of an image already found (links)"
BROKEN = "broken links"
UNREADABLE = "unreadable entries"
SPECIAL = "special files (pipes, sockets, devices)"
LOOSE = "files outside the class folders"
REASONS = (HIDDEN, NOT_IMAGE, OUTSIDE, INTO_SKIPPED, LOOP, SECOND_NAME, BROKEN, UNREADABLE, SPECIAL, LOOSE)


@dataclass
class Found:
    """What a walk found: the image files (paths under ``root`` as given, sorted by their relative path),
    the folders right under the root, and what it left out, by reason (relative paths)."""

    root: Path
    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def rel(self, path: str) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def note(self, what: str) -> str | None:
        """One line for people: how many images ``what`` (e.g. "data.root") holds and what was left out."""
        left = [(reason, self.skipped[reason]) for reason in REASONS if self.skipped.get(reason)]
        if not left:
            return None
        parts = [f"{reason}: {len(names)} (e.g. {one_line(names[0])})" for reason, names in left]
        return f"{what} '{one_line(str(self.root))}': {len(self.files)} images; left out {'; '.join(parts)}"


def walk_images(root: str | os.PathLike, skip: Path | None = None, limit: int = MAX_ENTRIES) -> Found:
    """Every image file under ``root`` (see the module's docstring); nothing under the folder ``skip``
    (a test folder inside the pool's folder). Raises :class:`DataError` past ``limit`` entries.

    Real folders and files are walked first, links after them (in name order, then what they lead to),
    so an image reached both ways keeps its real name, and the walk is the same every time."""
    return _Walk(Path(root), skip, limit).run()


class _Walk:
    """One walk: what it has seen (by device and inode), what it still has to visit, what it found."""

    def __init__(self, root: Path, skip: Path | None, limit: int):
        self.root, self.limit, self.count = root, limit, 0
        self.real_root = Path(os.path.realpath(root))
        self.found = Found(root)
        try:
            st = os.stat(self.real_root)
        except OSError as e:
            raise DataError(f"cannot read the folder '{root}' ({e.strerror})") from None
        self.seen_folders = {(st.st_dev, st.st_ino)}
        self.skip_key, self.skip_real = None, None
        if skip is not None and skip.is_dir():
            st = os.stat(skip)
            self.skip_key, self.skip_real = (st.st_dev, st.st_ino), Path(os.path.realpath(skip))
            self.seen_folders.add(self.skip_key)  # as if walked already: never entered, not reported
        self.seen_files: set[tuple[int, int]] = set()
        self.folders: list[tuple[str, str]] = [(str(root), "")]
        self.links: list[tuple[str, str]] = []  # (path, relative name), followed once the real entries are done
        self.taken: list[tuple[str, str]] = []  # (relative name, path) of the images

    def run(self) -> Found:
        while self.folders or self.links:
            if self.folders:
                self.scan(*self.folders.pop())
            else:  # the real entries are walked: now the links, in name order
                self.follow_links()
        self.found.files = [path for _, path in sorted(self.taken)]
        return self.found

    def take(self, path: str, name: str, st: os.stat_result) -> None:
        found, key = self.found, (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            if key in self.seen_folders:
                if key != self.skip_key:
                    found.skipped[LOOP].append(name)
                return
            self.seen_folders.add(key)
            self.folders.append((path, name + "/"))
            if "/" not in name:
                found.folders.append(name)
        elif not stat.S_ISREG(st.st_mode):
            found.skipped[SPECIAL].append(name)
        elif not name.lower().endswith(IMAGE_EXTENSIONS):
            found.skipped[NOT_IMAGE].append(name)
        elif key in self.seen_files:
            found.skipped[SECOND_NAME].append(name)
        else:
            self.seen_files.add(key)
            self.taken.append((name, path))

    def follow_links(self) -> None:
        skipped = self.found.skipped
        for path, name in sorted(self.links, key=lambda link: link[1]):
            try:
                target = os.path.realpath(path)
                st = os.stat(path)
            except OSError:
                skipped[BROKEN].append(name)
                continue
            if not Path(target).is_relative_to(self.real_root):
                skipped[OUTSIDE].append(name)
            elif self.skip_real is not None and Path(target).is_relative_to(self.skip_real):
                skipped[INTO_SKIPPED].append(name)  # a test image must not join the pool
            else:
                self.take(path, name, st)
        self.links = []
        self.folders.reverse()

    def scan(self, folder: str, rel: str) -> None:
        skipped = self.found.skipped
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            skipped[UNREADABLE].append(rel.rstrip("/") or ".")
            return
        depth = len(self.folders)
        for entry in entries:
            self.count += 1
            if self.count > self.limit:
                raise DataError(f"'{self.root}' holds more than {self.limit:,} files and folders; point at a smaller "
                                "folder (or a subfolder) of images")
            name = f"{rel}{entry.name}"
            if entry.name.startswith("."):
                skipped[HIDDEN].append(name)
                continue
            try:
                if entry.is_symlink():
                    self.links.append((entry.path, name))
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                skipped[UNREADABLE].append(name)
                continue
            self.take(entry.path, name, st)
        self.folders[depth:] = reversed(self.folders[depth:])  # depth first, in name order
