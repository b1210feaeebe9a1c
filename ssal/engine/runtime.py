"""Where and how this process runs: the Accelerator, its device and place among the run's processes,
the memory layout and loader workers, what only the main process shows (progress, messages, the
start line), and the agreement of all processes on an outcome the main process decides.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ssal.engine.batches import split_batch
from ssal.errors import SsalError

_frozen = False


def _freeze_the_imports() -> None:
    """Take what the process holds now (mostly the imported libraries: ~460k objects with torch, timm and
    matplotlib) out of the garbage collector's sight, once per process. accelerate's ``free_memory``,
    called after each fit, runs a full collection, and each walked all of them: 0.17 s per fit on 2
    CPU cores, half the time of a tiny round. They live as long as the process; what comes later is
    collected as before."""
    global _frozen
    if not _frozen:
        gc.collect()  # the garbage of before is freed, not frozen
        gc.freeze()
        atexit.register(gc.unfreeze)  # at exit they are freed as before (triton's bindings count leaks then)
        _frozen = True


class Runtime:
    """Owns the Accelerator: this process's device, rank and share of the work, and its voice."""

    def __init__(self, mixed_precision: str = "no", num_workers: int = 0, progress: bool = True,
                 accelerator: Accelerator | None = None, channels_last: bool = True):
        # with no accelerator device, cpu=True lets Accelerate form a gloo process group under
        # torchrun / accelerate launch (DistributedType.MULTI_CPU) instead of staying single-process
        self.accelerator = accelerator or Accelerator(mixed_precision=mixed_precision, cpu=not _has_accelerator())
        _freeze_the_imports()
        self.num_workers = num_workers
        self.show_progress = progress
        self.on_progress: Callable[[dict], None] | None = None  # also told each stage's progress (the page)
        # NHWC convolutions: ~20 % faster per step for cnn_small on CPU (docs/benchmarks.md), and
        # the layout tensor cores want under AMP
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def close(self) -> None:
        """Leave the process group (if any) cleanly."""
        if _distributed():
            self.accelerator.wait_for_everyone()
        shutdown_distributed()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    @contextlib.contextmanager
    def progress(self, desc: str, total: int) -> Iterator[Callable[..., None]]:
        """A rich progress bar on the main process; yields ``update(advance=1, **fields)``. With
        :attr:`on_progress` set, it is also told (stage, done, total, elapsed and remaining seconds) about
        once a second."""
        with self._shown_progress(desc, total) as shown:
            if self.on_progress is None or not self.is_main:
                yield shown
                return
            tell = _progress_teller(self.on_progress, desc, total)

            def update(advance: int = 1, **info: float) -> None:
                shown(advance, **info)
                tell(advance)

            yield update

    @contextlib.contextmanager
    def _shown_progress(self, desc: str, total: int) -> Iterator[Callable[..., None]]:
        if not (self.show_progress and self.is_main):
            yield lambda advance=1, **kw: None
            return
        if not Console().is_terminal:  # a log file or a pipe (the labeling page): a plain line per tenth
            yield _plain_progress(desc, total)
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(desc, total=total, info="")

            def update(advance: int = 1, **info: float) -> None:
                if info:
                    bar.update(task, advance=advance,
                               info="  ".join(f"{k} {v:.3g}" for k, v in info.items()))
                else:
                    bar.advance(task, advance)

            yield update

    def start_line(self, batches: dict[str, int]) -> str:
        """How this run executes, in one line: processes, backend, device(s), mixed precision and each
        global batch with its per-process share (``batches``: recipe key -> global batch size).
        Raises the one-line error of :func:`split_batch` for a batch that does not divide."""
        world = self.world
        shares = {key: split_batch(size, world, key) for key, size in batches.items()}
        procs = f"{world} processes ({torch.distributed.get_backend()})" if _distributed() else "1 process"
        if self.device.type == "cpu":
            threads = torch.get_num_threads()
            device = f"cpu ({threads} thread{'s' if threads > 1 else ''} per process)"
        else:
            name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
            device = f"{world} x {name}" if world > 1 else name
        batch = ", ".join(f"{key} {size}" + (f" ({shares[key]} per process)" if world > 1 else "")
                          for key, size in batches.items())
        return (f"ssal: {procs}, device {device}, mixed precision {self.accelerator.mixed_precision}; "
                f"global batch: {batch}")

    def announce(self, batches: dict[str, int]) -> None:
        """Print :meth:`start_line` (main process), and a warning when a launcher was asked for several
        processes but started one: ``accelerate launch --num_processes N`` without ``--multi_gpu``
        sets the rendezvous address, but runs a single process."""
        self.print(self.start_line(batches), highlight=False)
        if self.world == 1 and "MASTER_PORT" in os.environ and "ACCELERATE_USE_CPU" in os.environ \
                and "WORLD_SIZE" not in os.environ:
            self.print("[yellow]warning: accelerate launch was given several processes but started one; on CPUs use "
                       "'torchrun --nproc_per_node N -m ssal ...' or 'accelerate launch --multi_gpu --num_processes N "
                       "-m ssal ...'")

    def guarded(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on every process, for steps whose outcome the main process decides (it alone holds
        the run's lock and writes): a user error raised there is raised on every process, so that
        none waits forever for the others."""
        error, result = None, None
        try:
            result = fn()
        except SsalError as e:
            if not self.is_main:
                raise
            error = e
        if self.world > 1:
            box = [None if error is None else str(error)]
            broadcast_object_list(box)
            if box[0] is not None and error is None:
                raise SsalError(box[0])
        if error is not None:
            raise error
        return result

    def decided(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the main process alone (a step that reads what people may change at any moment, under
        a lock only it holds), its picklable result on every process; a user error raised there is raised
        on every process."""
        box, error = [None, None], None
        if self.is_main:
            try:
                box[0] = fn()
            except SsalError as e:
                box[1], error = str(e), e
        if self.world > 1:
            broadcast_object_list(box)
        if error is not None:
            raise error
        if box[1] is not None:
            raise SsalError(box[1])
        return box[0]

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            Console(soft_wrap=True).print(*args, **kwargs)  # long paths stay on one line


def _progress_teller(tell: Callable[[dict], None], desc: str, total: int,
                     every: float = 1.0) -> Callable[[int], None]:
    """``advance(n)`` that calls ``tell`` with the stage's state at most every ``every`` seconds (and
    at its start and end); the remaining time is extrapolated from the pace so far."""
    start, done = time.perf_counter(), 0
    last = start  # the start is told below

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.perf_counter()
        if now - last < every and done < total:
            return
        last, elapsed = now, now - start
        remaining = elapsed / done * (total - done) if done else None
        tell({"stage": desc, "done": done, "total": total, "elapsed_s": round(elapsed, 1),
              "remaining_s": None if remaining is None else round(remaining, 1)})

    tell({"stage": desc, "done": 0, "total": total, "elapsed_s": 0.0, "remaining_s": None})
    return advance


def _plain_progress(desc: str, total: int) -> Callable[..., None]:
    """``update`` for a non-terminal: ``desc: done/total (elapsed s) info`` at every tenth of ``total``."""
    start, done, shown = time.perf_counter(), 0, 0

    def update(advance: int = 1, **info: float) -> None:
        nonlocal done, shown
        done += advance
        tenth = done * 10 // max(total, 1)
        if tenth > shown or done == total:
            shown = tenth
            extra = "  ".join(f"{k} {v:.3g}" for k, v in info.items())
            print(f"{desc}: {done}/{total} ({time.perf_counter() - start:.0f} s){'  ' + extra if extra else ''}",
                  flush=True)

    return update


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shutdown_distributed() -> None:
    """Destroy the process group if one is up: a process that exits inside a gloo group can
    abort at teardown ("terminate called without an active exception")."""
    if _distributed():
        torch.distributed.destroy_process_group()


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()
