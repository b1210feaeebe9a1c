"""People's answers reach a run here: the open batch of a human run, and the one transaction that stores
answers (``ssal label import`` and the labeling page) under the answers' lock, while a run may pretrain
or train beside it (it takes a complete batch into the pool under the same lock).

With ``active.oracle: human`` a round ends after selection: the run writes ``rounds/rXX/queries.csv``
and ``queries.png`` (:mod:`ssal.label.queries`), then stops. ``ssal label import`` validates a whole
file against the open batch (all or nothing) and stores the answers atomically in ``answers.json``;
``ssal run --resume`` goes on once every query has an answer. "skip" / "unsure" are answers too: the
image leaves the candidates and the next round buys one more.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssal import files
from ssal.data.label_files import SKIP_WORDS, NoLabels, PoolNames, image_name, read_answer_file
from ssal.data.pool import SKIP, ActivePool
from ssal.errors import ConfigError, DataError, one_line
from ssal.label.stopping import is_complete
from ssal.run.checks import check_unchanged
from ssal.run.layout import QUERIES_CSV, SELECTED, round_folder
from ssal.run.lock import RunInUse
from ssal.run.store import RunDir
from ssal.run.transaction import Transaction

TRANSACTION_WAIT = 10.0  # seconds an import or an answer waits for another one to finish (two pages, ...)


@dataclass
class Batch:
    """The open query batch of a run: acquisition ``round``'s ``indices`` (and their paths); with ``ahead``,
    the images that acquisition chose ahead (``active.lookahead``), answered while the next round trains."""

    round: int
    indices: list[int]
    ahead: bool = False

    @property
    def folder(self) -> str:
        return round_folder(self.round)



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


def open_batch(rd: RunDir | Transaction, identity: dict) -> Batch:
    """The acquisition the run waits on, or a one-line error saying why nothing awaits labels."""
    rows = rd.committed()
    r = rows[-1]["round"] if rows else -1
    indices = rd.saved_selection(r)
    if indices is None:
        if is_complete(rows, identity["recipe"].get("active") or {}):
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


def open_ahead(rd: RunDir | Transaction, identity: dict) -> Batch | None:
    """The images the last acquisition chose ahead, open for answers while the next round trains: its
    batch is answered in full (in the pool, or complete and awaiting the run that takes it), the next
    acquisition has not taken them, none closed them. None otherwise."""
    rows = rd.committed()
    r = rows[-1]["round"] if rows else -1
    try:
        record = rd.selection_record(r)
    except files.Damaged:
        return None
    ahead = record.get("ahead") or []
    if not ahead or rd.saved_selection(r + 1) is not None or rd.read_ahead(r)[1]:
        return None
    try:
        entries = pool_entries(rd.load_pool(identity["pool"]["n"]))
    except files.Damaged:
        entries = set()  # no readable pool.json (the initial batch is open): nothing of the batch is in it
    taken = all(i in entries for i in record["indices"])
    if not taken:
        answered = rd.answers_of(r)
        taken = all(i in answered for i in record["indices"])
    return Batch(r, ahead, ahead=True) if taken else None


def stored_answers(rd: RunDir | Transaction, batch: Batch) -> dict[int, int]:
    """The answers stored for ``batch`` (for a batch, also those its images got while chosen ahead)."""
    return rd.read_ahead(batch.round)[0] if batch.ahead else rd.answers_of(batch.round)


def _record_key(batch: Batch, key: str) -> str:
    return f"ahead_{key}" if batch.ahead else key


def batch_pool(rd: RunDir | Transaction, identity: dict, batch: Batch) -> PoolNames:
    """What answers to ``batch`` are checked against (and names its images in answers.json)."""
    record = rd.selection_record(batch.round)
    key = _record_key(batch, "paths")
    names = dict(zip(batch.indices, record[key], strict=True)) if key in record else None
    root = (identity["recipe"].get("data") or {}).get("root")
    return PoolNames(identity["pool"]["n"], names, list(identity["pool"]["classes"]),
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


def update_answers(rd: RunDir, identity: dict, source: str, given: Callable[[Batch, PoolNames], dict[int, int | None]],
                   expect_round: int | None = None, ahead: bool = False) -> Stored:
    """The one way answers reach a run (``ssal label import`` and the labeling page): under the answers' lock,
    ``given(batch, pool)`` yields validated answers (index -> class, SKIP, or None to withdraw one) to the
    open batch; any answer to an image the batch did not query refuses them all (``source`` names where they
    came from); the merge with the stored answers is written atomically. ``expect_round``: refuse
    (:class:`BatchChanged`) if another batch is open."""
    with rd.transaction(purpose="answers", wait=TRANSACTION_WAIT) as tx:  # removes what a killed import left
        for note in tx.notes:
            print(f"note: {note}")
        batch = open_ahead(tx, identity) if ahead else open_batch(tx, identity)
        if batch is None:
            raise BatchChanged("the images chosen ahead are taken by the next batch now; reload the page")
        if expect_round is not None and batch.round != expect_round:
            raise BatchChanged(f"the open batch is {batch.folder} now, not the one answered; reload the page")
        return _store(tx, identity, batch, source, given)


def _store(rd: RunDir | Transaction, identity: dict, batch: Batch, source: str,
           given: Callable[[Batch, PoolNames], dict[int, int | None]]) -> Stored:
    """The transaction of :func:`update_answers`, its lock held (by it, or by the run itself)."""
    pool = batch_pool(rd, identity, batch)
    answers = given(batch, pool)
    queried = set(batch.indices)
    stray = sorted(i for i in answers if i not in queried)
    if stray:
        raise DataError(f"{source} labels {len(stray)} images that the open batch ({batch.folder}, "
                        f"{len(queried)} images) did not query, e.g. index {stray[0]}; answer only "
                        f"{batch.folder}/{QUERIES_CSV}")
    stored = stored_answers(rd, batch)
    if not answers:
        return Stored(batch, stored, 0, 0)
    check_answered_images(rd, identity, batch, [i for i, y in answers.items() if y is not None])
    changed = sum(1 for i, y in answers.items() if i in stored and stored[i] != y)
    for i, y in answers.items():
        if y is None:
            stored.pop(i, None)
        else:
            stored[i] = y
    if batch.ahead:
        rd.save_ahead(batch.round, stored, False, names=pool.names)
    else:
        rd.save_answers(batch.round, stored, names=pool.names)  # answers.json names the images too
    return Stored(batch, stored, len(answers), changed)


def check_answered_images(rd: RunDir | Transaction, identity: dict, batch: Batch, indices: list[int]) -> None:
    """The files of ``indices`` still hold the images the batch recorded when it was queried (a one-line
    error naming the first that changed: an answer is for what a person saw)."""
    record = rd.selection_record(batch.round)
    digests = record.get(_record_key(batch, "digests"))
    root = (identity["recipe"].get("data") or {}).get("root")
    if not indices or not isinstance(digests, list) or len(digests) != len(batch.indices) or root is None:
        return
    position = {i: k for k, i in enumerate(batch.indices)}
    names = dict(zip(batch.indices, record.get(_record_key(batch, "paths")) or [], strict=False))
    root = Path(os.path.expanduser(root))
    check_unchanged(indices, [digests[position[i]] for i in indices],
                    [files.file_identity(root / names[i]) for i in indices], names, f"{batch.folder}/{SELECTED}")


def take_filled_queries(rd: RunDir, r: int) -> str | None:
    """Answers a person wrote into the run's own ``rounds/rXX/queries.csv`` (filled in place, instead of
    ``ssal label import``), stored by the run that holds the lock. Only images without a stored answer
    take one; a different stored answer is a one-line error. Returns what was taken, or None."""
    path = rd.queries_csv(r)
    if not path.is_file():
        return None
    identity = rd.identity()
    batch = Batch(r, rd.read_selection(r))
    stored = rd.answers_of(r)
    taken = 0

    def read(batch: Batch, pool: PoolNames) -> dict[int, int]:
        nonlocal taken
        try:
            answers = read_answer_file(path, pool, rd.run_id()).labels
        except NoLabels:
            return {}
        clash = next((i for i, y in answers.items() if i in stored and stored[i] != y), None)
        if clash is not None:
            raise DataError(f"{path} answers {image_name(pool, clash)} with '{_label_name(pool, answers[clash])}', but "
                            f"the run holds the answer '{_label_name(pool, stored[clash])}' for it (from the labeling "
                            f"page or an import): to replace stored answers import the file ('ssal label import "
                            f"{rd.path} {path}'), or make the two agree")
        new = {i: y for i, y in answers.items() if i not in stored}
        taken = len(new)
        return new

    _store(rd, identity, batch, str(path), read)
    return f"took {taken} answers from {path}" if taken else None


def _label_name(pool: PoolNames, y: int) -> str:
    return SKIP_WORDS[0] if y == SKIP else pool.classes[y]


def queried_pool(rd: RunDir | Transaction, identity: dict, batch: Batch) -> PoolNames:
    """What a file import is checked against: the images of every batch this run queried so far (a whole
    Label Studio project's export names earlier rounds' tasks too), the open batch's answered as usual."""
    names: dict[int, str] = {}
    for r in range(-1, batch.round + 1):
        try:
            record = rd.selection_record(r)
        except files.Damaged:
            continue
        for key in ("", "ahead_"):
            indices = record.get("ahead" if key else "indices") or []
            names.update(zip(indices, record.get(f"{key}paths") or [], strict=False))
    own = batch_pool(rd, identity, batch)
    what = own.what + (" or an earlier batch" if batch.round >= 0 else "")
    return PoolNames(own.n, names if own.names is not None else None, own.classes, own.root, what)


def earlier_answers(rd: RunDir | Transaction, identity: dict, answers: dict[int, int], batch: Batch,
                    pool: PoolNames, source: str) -> int:
    """Drop from ``answers`` those to images already in the pool (a whole-project export names the earlier
    rounds' tasks again) and return how many; one of them that contradicts the pool is a one-line error."""
    try:
        held = {i: y for i, y, _ in rd.load_pool(identity["pool"]["n"]).state_dict()["labeled"]}
    except files.Damaged:
        return 0
    earlier = [i for i in answers if i in held and i not in set(batch.indices)]
    clash = [i for i in earlier if answers[i] != held[i]]
    if clash:
        shown = ", ".join(f"{image_name(pool, i)} (index {i}: '{_label_name(pool, answers[i])}', the pool holds "
                          f"'{_label_name(pool, held[i])}')" for i in clash[:3])
        more = f" and {len(clash) - 3} more" if len(clash) > 3 else ""
        raise DataError(f"{source} answers images of earlier batches otherwise than the run took them: {shown}{more}; "
                        "an import does not change a label in the pool: make the file agree, or answer only "
                        f"{batch.folder}/{QUERIES_CSV}")
    if earlier and len(earlier) == len(answers):
        raise DataError(f"{source} answers only images of earlier batches ({len(earlier)}, as the pool holds them), "
                        f"none of the open batch {batch.folder}: answer {batch.folder}/{QUERIES_CSV} (or export the "
                        "project again once its tasks are labeled)")
    for i in earlier:
        del answers[i]
    return len(earlier)


def import_labels(run_dir: str | os.PathLike, label_file: str | os.PathLike, annotators: str = "refuse") -> str:
    """Validate ``label_file`` against the open batch of a run and store its answers (all or nothing); answers
    to earlier batches' images that agree with the pool are recognised and counted. ``annotators``: which of
    several answers for one image counts (:data:`ssal.data.label_files.RULES`; the images it cannot settle
    stay open and are named). Returns what happened, for people."""
    rd = RunDir(run_dir)
    identity = human_run(rd, in_use_ok=True)  # a run may train meanwhile: it takes the answers when it needs them
    empty = earlier = 0
    names: PoolNames | None = None
    still: dict[int, list[str]] = {}

    def read(batch: Batch, pool: PoolNames) -> dict[int, int]:
        nonlocal empty, earlier, names, still
        names = queried_pool(rd, identity, batch)
        got = read_answer_file(label_file, names, rd.run_id(), annotators)
        answers, empty, still = got.labels, got.empty, got.open
        earlier = earlier_answers(rd, identity, answers, batch, names, str(label_file))
        return answers

    done = update_answers(rd, identity, str(label_file), read)
    queried = done.batch.indices
    missing = [i for i in queried if i not in done.answers]
    skipped = sum(1 for i in queried if done.answers.get(i) == SKIP)
    head = (f"imported {done.given} answer{'s' if done.given != 1 else ''} for {done.batch.folder}" +
            (f" ({done.changed} changed)" if done.changed else "") +
            (f", {skipped} skipped" if skipped else "") + (f"; {empty} rows had no label" if empty else "") +
            (f"; {earlier} answers to earlier batches agree with the pool" if earlier else "") +
            (f"; {len(still)} left open, their answers disagree under --annotators {annotators}: " +
             ", ".join(f"{image_name(names, i)} ({', '.join(one_line(t) for t in texts)})"
                       for i, texts in list(still.items())[:5]) + (" ..." if len(still) > 5 else "") if still else ""))
    if missing:  # named: an export that leaves out skipped or cancelled tasks says which
        shown = ", ".join(image_name(names, i) for i in missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return f"{head}; {len(missing)} of {len(queried)} images still await labels: {shown}"
    holder = rd.holder()
    if holder:  # a run pretrains or trains: it takes them when it is ready
        return f"{head}; all {len(queried)} answered: the run in progress ({holder}) takes them when it is ready"
    return f"{head}; all {len(queried)} answered: continue with 'ssal run --resume {rd.path}'"


def pool_entries(pool: ActivePool) -> set[int]:
    return {i for i, _, _ in pool.state_dict()["labeled"]}
