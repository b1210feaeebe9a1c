"""What the ImageFolder check costs: every image decoded once before a run, remembered afterwards.

Writes N images into a temporary folder (``train/<class>/<i>.<ext>``), then times, in one process:
  index   building the folder's file list (torchvision's ImageFolder, what loading does anyway)
  cold    the check with an empty cache (every file decoded, on a thread pool)
  warm    the check again (a stat per file against the cache: nothing decoded)
  epoch   one pass that decodes and resizes every image as training does (FolderSplit.load), the
          reference: the cold check is paid once, an epoch every time the data is read
  walk    ssal's folder walk (each real file once, links checked), vs the index
  digests checksums of --labeled files (what --resume checks a run's labeled images against), vs
          decoding the same files (their share of an epoch)

    .venv/bin/python scripts/bench_imagecheck.py --files 10000 --format png --side 32
    .venv/bin/python scripts/bench_imagecheck.py --files 10000 --format jpeg --side 256
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssal.data.datasets import FolderSplit
from ssal.data.imagecheck import check_images
from ssal.data.walk import walk_images


def write_images(root: Path, n: int, fmt: str, side: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, i, axis=1)  # distinct content, same statistics
        Image.fromarray(img).save(folder / f"{i}.{'jpg' if fmt == 'jpeg' else 'png'}", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10000)
    p.add_argument("--format", choices=["png", "jpeg"], default="png")
    p.add_argument("--side", type=int, default=32, help="side of the written images in px")
    p.add_argument("--image-size", type=int, default=32, help="data.image_size: what training resizes to")
    p.add_argument("--labeled", type=int, default=1000, help="labeled images whose files --resume checks")
    args = p.parse_args()

    from torchvision.datasets import ImageFolder

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "cache"
        t = time.perf_counter()
        write_images(root, args.files, args.format, args.side)
        written = time.perf_counter() - t
        size_mb = sum(f.stat().st_size for f in root.rglob("*.*")) / 2**20

        t = time.perf_counter()
        folder = ImageFolder(str(root / "train"))
        index_s = time.perf_counter() - t
        split = FolderSplit(folder.samples, (args.image_size, args.image_size), 3, root / "train")
        rel = split.files()[1]

        t = time.perf_counter()
        check_images(root / "train", rel, str(cache))()
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        check_images(root / "train", rel, str(cache))()
        warm_s = time.perf_counter() - t

        t = time.perf_counter()
        for start in range(0, len(split), 256):
            split.load(torch.arange(start, min(start + 256, len(split))))
        epoch_s = time.perf_counter() - t

        t = time.perf_counter()
        walked = walk_images(root / "train")
        walk_s = time.perf_counter() - t
        assert len(walked.files) == args.files
        labeled = list(range(0, len(split), max(1, len(split) // args.labeled)))[: args.labeled]
        t = time.perf_counter()
        split.digests(labeled)
        digest_s = time.perf_counter() - t
        t = time.perf_counter()
        split.load(torch.tensor(labeled))
        decode_s = time.perf_counter() - t

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch threads "
          f"{torch.get_num_threads()}")
    print(f"{args.files} {args.format} files of {args.side}x{args.side} px ({size_mb:.1f} MB, written in "
          f"{written:.1f} s); training resizes to {args.image_size} px")
    print(f"index  {index_s:8.3f} s")
    print(f"cold   {cold_s:8.3f} s   {1e6 * cold_s / args.files:7.1f} us/file   "
          f"{cold_s / epoch_s:.2f}x one decoding epoch")
    print(f"warm   {warm_s:8.3f} s   {1e6 * warm_s / args.files:7.1f} us/file   {warm_s / index_s:.2f}x the index")
    print(f"epoch  {epoch_s:8.3f} s   {1e6 * epoch_s / args.files:7.1f} us/file (one pass of FolderSplit.load)")
    print(f"walk   {walk_s:8.3f} s   {1e6 * walk_s / args.files:7.1f} us/file   {walk_s / index_s:.2f}x the index")
    print(f"digests {digest_s:7.3f} s for {len(labeled)} labeled files   "
          f"{1e6 * digest_s / len(labeled):7.1f} us/file   "
          f"{digest_s / decode_s:.2f}x decoding them ({decode_s:.3f} s)")


if __name__ == "__main__":
    main()
