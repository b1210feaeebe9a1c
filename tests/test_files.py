"""ssal.files (atomic writes, seals, stale temporary files) and ssal.faults (failpoints)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from ssal import faults, files
from ssal.files import Damaged, StorageError


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.json"
    files.write_json(path, {"x": 1})
    files.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~files._UMASK)


@pytest.mark.parametrize("action, words", [("enospc", "no space left on device; free some space"),
                                           ("eacces", "permission denied; check its permissions"),
                                           ("erofs", "read-only file system"),
                                           ("eio", "input/output error; check the disk")])
def test_a_failed_write_keeps_the_old_file_and_says_why_in_one_line(tmp_path, action, words):
    path = tmp_path / "state.json"
    files.write_json(path, {"old": True})
    with faults.active(f"write:state.json={action}"), pytest.raises(StorageError) as e:
        files.write_json(path, {"old": False})
    assert str(e.value).startswith(f"cannot write '{path}': ") and words in str(e.value)
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["state.json"]


def test_json_is_never_written_with_nan_or_infinity(tmp_path):
    with pytest.raises(ValueError):
        files.write_json(tmp_path / "m.json", {"loss": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_seal_and_unseal(tmp_path):
    sealed = files.seal({"b": [1, 2], "a": {"c": 3}})
    assert sealed["checksum"] == files.json_digest({"a": {"c": 3}, "b": [1, 2]})  # key order does not matter
    assert files.unseal(json.loads(json.dumps(sealed)), tmp_path) == {"b": [1, 2], "a": {"c": 3}}
    for bad in ({**sealed, "b": [1, 3]}, {"b": [1, 2]}, [], {**sealed, "checksum": 5}):
        with pytest.raises(Damaged):
            files.unseal(bad, tmp_path)


@pytest.mark.parametrize("content, reason", [(None, "missing"), (b"\xff\x00", "not text"), (b"{", "not valid JSON")])
def test_read_json_says_how_a_file_is_damaged(tmp_path, content, reason):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(Damaged, match=reason):
        files.read_json(path)


def test_tensor_checksum_sees_every_value_dtype_and_shape():
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3), "nested": {"b": torch.ones(2)}, "r": 1}
    c = files.tensor_checksum(state)
    assert c == files.tensor_checksum({"r": 1, "nested": {"b": torch.ones(2)}, "n": torch.tensor(3),
                                       "w": torch.arange(6.0).reshape(2, 3)})
    for changed in ({**state, "w": torch.arange(6.0).reshape(3, 2)}, {**state, "w": torch.arange(6).reshape(2, 3)},
                    {**state, "n": torch.tensor(4)}, {**state, "r": 2}, {**state, "nested": {"b": torch.zeros(2)}}):
        assert files.tensor_checksum(changed) != c


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".pool.json.{dead_pid}.abc.tmp"
    live = tmp_path / f".pool.json.{os.getpid()}.def.tmp"
    keep = tmp_path / ".notes.tmp"  # not a name ssal makes
    for p in (stale, live, keep):
        p.write_text("x")
    assert files.remove_stale_tmp(tmp_path, only_dead=True) == [stale]
    assert files.remove_stale_tmp(tmp_path) == [live]
    assert keep.exists()


def test_writable_problem(tmp_path):
    (tmp_path / "file").write_text("x")
    assert files.writable_problem(tmp_path / "new" / "deeper") is None
    assert "is a file" in files.writable_problem(tmp_path / "file" / "out")
    assert "is a file" in files.writable_problem(tmp_path / "file")


def test_failpoints_count_hits_and_match_globs():
    hits = []
    with faults.active("write:round_*.pt=eio@2+"):
        for name in ("write:round_00.pt", "write:pool.json", "write:round_01.pt", "write:round_02.pt"):
            try:
                faults.failpoint(name)
                hits.append((name, None))
            except OSError as e:
                hits.append((name, e.errno))
    assert hits == [("write:round_00.pt", None), ("write:pool.json", None), ("write:round_01.pt", errno.EIO),
                    ("write:round_02.pt", errno.EIO)]
    faults.failpoint("write:round_03.pt")  # outside the block: nothing
    with pytest.raises(ValueError, match="bad failpoint"):
        faults._parse("x=explode")


def test_a_signal_failpoint_sends_the_signal_at_its_hit_and_goes_on():
    import signal

    got = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: got.append(sig))
    try:
        with faults.active("train.step=sigterm@2"):
            for step in range(3):
                faults.failpoint("train.step")
                got.append(step)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [0, signal.SIGTERM, 1, 2]  # the handler ran at the 2nd hit, before the code after it


def test_a_failpoint_can_name_the_process_it_acts_in(monkeypatch):
    """``#r``: only the process of rank r (torchrun's RANK) acts; the others ignore the rule."""
    spec = "train.step=kill@5#1,evaluate=eio#0"
    monkeypatch.setenv("RANK", "1")
    assert faults._parse(spec) == [("train.step", "kill", 5, False)]
    monkeypatch.setenv("RANK", "0")
    assert faults._parse(spec) == [("evaluate", "eio", 1, False)]
    with faults.active("evaluate=eio#0,select=eio#1"):
        faults.failpoint("select")  # rank 1's: nothing here
        with pytest.raises(OSError):
            faults.failpoint("evaluate")
    with pytest.raises(ValueError, match="bad failpoint"):
        faults._parse("x=kill#one")


def test_a_malformed_failpoint_variable_is_one_line_before_anything_runs(monkeypatch, capsys, tmp_path):
    from ssal.cli import main

    monkeypatch.setattr(faults, "_RULES", [("*", "invalid", 1, False)])
    monkeypatch.setattr(faults, "_INVALID", "SSAL_FAILPOINTS: bad failpoint 'foo'")
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssal: error: SSAL_FAILPOINTS: bad failpoint 'foo'")
    assert list(tmp_path.iterdir()) == []
