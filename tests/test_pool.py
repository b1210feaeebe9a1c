"""ActivePool: labeling rules, acquisition order, state format, head; pool.json: atomic, sealed, verified."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssal import files
from ssal.data.pool import ActivePool
from ssal.files import Damaged, StorageError
from ssal.run.store import RunDir


def snapshot(pool: ActivePool):
    return (json.dumps(pool.state_dict()), pool.labeled_mask.clone(), pool.labeled_indices.clone(),
            pool.labels.clone(), pool.rounds().clone(), pool.n_labeled)


def assert_same(a, b):
    assert a[0] == b[0] and a[5] == b[5]
    for x, y in zip(a[1:5], b[1:5], strict=True):
        assert torch.equal(x, y)


def test_new_pool_is_empty():
    p = ActivePool(5)
    assert p.n == 5 and p.n_labeled == 0
    assert p.labeled_indices.tolist() == [] and p.unlabeled_indices.tolist() == [0, 1, 2, 3, 4]
    assert p.state_dict() == {"n": 5, "labeled": []}
    with pytest.raises(ValueError):
        ActivePool(0)


def test_label_keeps_acquisition_order_and_complement():
    p = ActivePool(10)
    p.label([7, 2, 9], [1, 0, 3], round=0)
    p.label(torch.tensor([0, 5]), torch.tensor([4, 4]), round=1)
    p.label([3], [2], round=[2])
    assert p.labeled_indices.tolist() == [7, 2, 9, 0, 5, 3]
    assert p.labels.tolist() == [1, 0, 3, 4, 4, 2]
    assert p.rounds().tolist() == [0, 0, 0, 1, 1, 2]
    assert p.unlabeled_indices.tolist() == [1, 4, 6, 8]
    assert p.labeled_mask.tolist() == [i in {7, 2, 9, 0, 5, 3} for i in range(10)]
    assert p.n_labeled == 6
    assert p.state_dict() == {"n": 10, "labeled": [[7, 1, 0], [2, 0, 0], [9, 3, 0], [0, 4, 1], [5, 4, 1],
                                                   [3, 2, 2]]}


def test_label_with_per_index_rounds():
    p = ActivePool(6)
    p.label([4, 1, 2], [0, 1, 2], round=[3, 0, 1])
    assert p.state_dict()["labeled"] == [[4, 0, 3], [1, 1, 0], [2, 2, 1]]


def test_empty_label_call_is_a_no_op():
    p = ActivePool(4)
    p.label([1], [0], 0)
    before = snapshot(p)
    p.label([], [], 1)
    assert_same(before, snapshot(p))


@pytest.mark.parametrize("indices,labels,round,exc", [
    ([3, 1], [0, 0], 1, ValueError),          # 1 is already labeled (3 is new: still nothing changes)
    ([1], [2], 1, ValueError),                # relabeling
    ([8], [0], 1, IndexError),                # == n
    ([100], [0], 1, IndexError),
    ([-1], [0], 1, IndexError),               # negative, would wrap around in torch indexing
    ([4, 5, 4], [0, 1, 2], 1, ValueError),    # duplicate in one call
    ([4, 5], [0], 1, ValueError),             # lengths differ
    ([4], [-2], 1, ValueError),               # negative label (-1 is SKIP)
    ([4], [0], -1, ValueError),               # negative round
])
def test_label_refusals_change_nothing(indices, labels, round, exc):
    p = ActivePool(8)
    p.label([1, 6], [2, 3], 0)
    before = snapshot(p)
    with pytest.raises(exc):
        p.label(indices, labels, round)
    assert_same(before, snapshot(p))
    # and the pool still works afterwards
    p.label([4], [1], 1)
    assert p.labeled_indices.tolist() == [1, 6, 4]


def test_state_dict_roundtrip_and_json(tmp_path):
    p = ActivePool(12)
    p.label([11, 0, 5], [2, 2, 0], 0)
    p.label([3], [9], 1)
    sd = p.state_dict()
    q = ActivePool(1)
    q.load_state_dict(json.loads(json.dumps(sd)))
    assert q.n == 12 and q.state_dict() == sd
    assert q.labeled_indices.tolist() == [11, 0, 5, 3]
    assert q.unlabeled_indices.tolist() == [1, 2, 4, 6, 7, 8, 9, 10]
    # loading replaces state entirely (no leftovers from before)
    q.load_state_dict({"n": 3, "labeled": []})
    assert q.n == 3 and q.n_labeled == 0 and q.unlabeled_indices.tolist() == [0, 1, 2]


def test_save_load_roundtrip_and_no_tmp_left(tmp_path):
    p = ActivePool(20)
    p.label([19, 4, 7], [1, 0, 1], 0)
    p.label([2], [5], 1)
    run = RunDir(tmp_path)
    run.save_pool(p)
    assert sorted(os.listdir(tmp_path)) == ["pool.json"]
    body = {"n": 20, "labeled": [[19, 1, 0], [4, 0, 0], [7, 1, 0], [2, 5, 1]]}
    assert json.loads((tmp_path / "pool.json").read_text()) == {**body, "checksum": files.json_digest(body)}
    assert run.load_pool(20).state_dict() == p.state_dict()
    # overwriting works and still leaves only the one file
    p.label([0], [3], 2)
    run.save_pool(p)
    assert sorted(os.listdir(tmp_path)) == ["pool.json"]
    assert run.load_pool(20).state_dict() == p.state_dict()


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_failed_save_keeps_old_file_and_leaves_no_tmp(tmp_path, monkeypatch, broken):
    run = RunDir(tmp_path)
    path = tmp_path / "pool.json"
    p = ActivePool(10)
    p.label([1, 2], [0, 1], 0)
    run.save_pool(p)
    old = path.read_bytes()
    p.label([3], [1], 1)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, broken, boom)
    with pytest.raises(StorageError, match="no space left on device"):
        run.save_pool(p)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["pool.json"]
    # a failed first save leaves nothing at all
    other = tmp_path / "other"
    other.mkdir()
    with monkeypatch.context() as m:
        m.setattr(files.os, broken, boom)
        with pytest.raises(StorageError):
            RunDir(other).save_pool(p)
    assert os.listdir(other) == []


@pytest.mark.parametrize("content", [
    [],
    {},
    {"labeled": []},
    {"n": 5},
    {"n": "five", "labeled": []},
    {"n": 5, "labeled": 3},
    {"n": 5, "labeled": [[1, 2]]},
    {"n": 5, "labeled": [[1, 2, 0], [3, 4]]},
    {"n": 5, "labeled": [[1, 2, 0, 7]]},
    {"n": 5, "labeled": [[5, 0, 0]]},
    {"n": 5, "labeled": [[-1, 0, 0]]},
    {"n": 5, "labeled": [[1, 0, 0], [1, 1, 0]]},
    {"n": 5, "labeled": [[1, -2, 0]]},  # -1 is "skipped"; below it nothing
    {"n": 5, "labeled": [[1, 0, -2]]},
    {"n": 5, "labeled": [[1, "cat", 0]]},
    {"n": 5, "labeled": [[1, None, 0]]},
    {"n": 5, "labeled": [[1, 2.5, 0]]},
    {"n": 5, "labeled": [[1, True, 0]]},
    {"n": 5, "labeled": [[1, 2**70, 0]]},
    {"n": 5, "labeled": [1, 2, 0]},
    {"n": 20, "labeled": []},  # another pool's file
])
def test_a_sealed_but_malformed_pool_file_is_damaged(tmp_path, content):
    """Even with a valid checksum (a file edited and re-sealed by hand), the structure is checked."""
    obj = files.seal(content) if isinstance(content, dict) else content
    (tmp_path / "pool.json").write_text(json.dumps(obj))
    with pytest.raises(Damaged) as e:
        RunDir(tmp_path).load_pool(5)
    assert e.value.path.name == "pool.json"


@pytest.mark.parametrize("content, reason", [
    (None, "missing"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not text"),
    (b'{"n": 5, "labeled": [[1, 2, 0]]', "not valid JSON"),
    (b'{"n": 5, "labeled": [[1, 2, 0]]}', "no checksum"),
    (b'{"n": 5, "labeled": [[1, 3, 0]], "checksum": "%s"}', "checksum mismatch"),
])
def test_a_missing_unreadable_or_changed_pool_file_is_damaged(tmp_path, content, reason):
    if content is not None:
        if b"%s" in content:
            content = content % files.json_digest({"n": 5, "labeled": [[1, 2, 0]]}).encode()
        (tmp_path / "pool.json").write_bytes(content)
    with pytest.raises(Damaged, match=reason):
        RunDir(tmp_path).load_pool(5)


def test_head_keeps_the_first_labels_in_acquisition_order():
    p = ActivePool(10)
    p.label([5, 1], [0, 1], 0)
    p.label([8], [2], 1)
    p.label([0, 9], [3, 3], 2)
    h = p.head(3)
    assert h.state_dict() == {"n": 10, "labeled": [[5, 0, 0], [1, 1, 0], [8, 2, 1]]}
    assert h.unlabeled_indices.tolist() == [0, 2, 3, 4, 6, 7, 9]
    assert p.n_labeled == 5  # the original is untouched
    assert p.head(0).n_labeled == 0 and p.head(5).state_dict() == p.state_dict()
    with pytest.raises(ValueError):
        p.head(6)
    assert p.round_of(2).tolist() == [0, 9] and p.round_of(0).tolist() == [5, 1] and p.round_of(7).tolist() == []


@st.composite
def label_calls(draw):
    n = draw(st.integers(1, 60))
    perm = draw(st.permutations(range(n)))
    n_used = draw(st.integers(0, n))
    cuts = sorted(draw(st.lists(st.integers(0, n_used), max_size=6)))
    bounds = [0, *cuts, n_used]
    calls = []
    for r, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        idx = list(perm[a:b])
        labels = draw(st.lists(st.integers(0, 9), min_size=len(idx), max_size=len(idx)))
        rounds = draw(st.one_of(st.just(r), st.lists(st.integers(0, 5), min_size=len(idx), max_size=len(idx))))
        calls.append((idx, labels, rounds))
    return n, calls, draw(st.integers(-1, 6))


@settings(max_examples=60, deadline=None)
@given(label_calls())
def test_property_disjoint_label_calls(case):
    n, calls, max_round = case
    p = ActivePool(n)
    expected = []
    for idx, labels, rounds in calls:
        p.label(idx, labels, rounds)
        rs = rounds if isinstance(rounds, list) else [rounds] * len(idx)
        expected += [[i, y, r] for i, y, r in zip(idx, labels, rs, strict=True)]
    assert p.n_labeled == sum(len(c[0]) for c in calls) == len(expected)
    assert p.labeled_indices.tolist() == [e[0] for e in expected]
    assert p.labels.tolist() == [e[1] for e in expected]
    assert p.rounds().tolist() == [e[2] for e in expected]
    labeled = {e[0] for e in expected}
    assert p.unlabeled_indices.tolist() == [i for i in range(n) if i not in labeled]
    sd = p.state_dict()
    assert sd == {"n": n, "labeled": expected}
    q = ActivePool(1)
    q.load_state_dict(json.loads(json.dumps(sd)))
    assert q.state_dict() == sd
    assert torch.equal(q.labeled_mask, p.labeled_mask)
    # head keeps exactly the first rows, in order; round_of the rows of one round
    count = max(0, min(len(expected), max_round))
    h = q.head(count)
    kept = expected[:count]
    assert h.state_dict() == {"n": n, "labeled": kept}
    assert h.n_labeled == len(kept)
    assert h.unlabeled_indices.tolist() == [i for i in range(n) if i not in {e[0] for e in kept}]
    assert q.round_of(max_round).tolist() == [e[0] for e in expected if e[2] == max_round]


def test_failed_load_state_dict_leaves_pool_unchanged():
    p = ActivePool(10)
    p.label([4, 2], [1, 0], 0)
    before = snapshot(p)
    for bad in ({"n": 10, "labeled": [[1, 0, 0], [1, 1, 0]]}, {"n": 10, "labeled": [[3, 1]]},
                {"n": 3, "labeled": [[7, 0, 0]]}, {"n": 10}):
        with pytest.raises((ValueError, IndexError, KeyError)):
            p.load_state_dict(bad)
        assert_same(before, snapshot(p))
        assert p.n == 10
