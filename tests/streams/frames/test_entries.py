"""RankEntries: a job rule's per-rank entries as columns, live lists for the scalar path, and the
mapping the snapshot codec stores."""

from __future__ import annotations

import copy
import math
import pickle
import random

import numpy as np
import pytest

from rankwatch.streams import Engine, JobState, RankState
from rankwatch.streams.frames import RankEntries
from rankwatch.streams.state_codec import Layout, decode_job, encode_job

FIELDS = (("step", -1), ("lr", math.nan), ("name", ""), ("bits", 0), ("on", False))


def test_columns_take_the_kind_of_each_default() -> None:
    entries = RankEntries(FIELDS)
    entries.add(np.array([2], dtype=np.int64))
    cols = entries.columns()
    assert [cols[n].dtype for n in ("step", "lr", "bits", "on")] == [
        np.int64,
        np.float64,
        np.int64,
        np.bool_,
    ]
    assert cols["name"].dtype == object
    assert cols["step"].tolist() == [-1, -1, -1] and entries.present().tolist() == [0, 0, 1]


def test_a_live_list_is_written_back_before_the_next_vector_access() -> None:
    entries = RankEntries(FIELDS)
    e = entries.fresh()
    entries[5] = e
    e[0], e[2] = 9, "cosine"  # changed in place after it was put, as a dict's list would be
    assert entries.columns()["step"][5] == 9 and entries.columns()["name"][5] == "cosine"
    got = entries.get(5)
    assert got[0] == 9 and got[2:] == ["cosine", 0, False] and math.isnan(got[1])
    assert type(got[0]) is int and type(got[1]) is float and type(got[4]) is bool
    got[3] = 4
    assert entries.columns()["bits"][5] == 4


def test_the_mapping_is_rank_to_entry_ranks_ascending() -> None:
    entries = RankEntries(FIELDS)
    for r in (7, 1, 4):
        entries[r] = [r, 0.5, "x", 0, True]
    assert list(entries) == [1, 4, 7] and len(entries) == 3
    assert 4 in entries and 2 not in entries and "4" not in entries
    assert entries.items()[0] == (1, [1, 0.5, "x", 0, True])
    assert entries.pop(4)[0] == 4 and list(entries) == [1, 7] and entries.pop(4) is None
    with pytest.raises(KeyError):
        entries[4]
    entries.clear()
    assert len(entries) == 0 and entries.get(1) is None


def test_bad_entries_are_refused_with_the_reason() -> None:
    entries = RankEntries(FIELDS)
    with pytest.raises(ValueError, match="an entry has 5 fields, got 2"):
        entries[0] = [1, 2.0]
    with pytest.raises(ValueError, match="rank -1 is negative"):
        entries[-1] = entries.fresh()


def test_checkout_hands_out_live_lists_of_many_ranks() -> None:
    entries = RankEntries(FIELDS)
    rows = entries.checkout(np.array([3, 0], dtype=np.int64))
    assert [[v for v in row if v == v] for row in rows] == [[-1, "", 0, False]] * 2
    rows[0][0] = 30
    rows[1][0] = 0
    assert entries.columns()["step"].tolist() == [0, -1, -1, 30]


def test_a_rank_far_beyond_the_others_is_kept_apart_not_as_gigabytes_of_rows() -> None:
    # A producer's bug: rank 2**62 in a 4-rank job. Columns up to it cannot be made.
    entries = RankEntries(FIELDS)
    entries.add(np.arange(4, dtype=np.int64))
    far = 2**62
    entries[far] = [1, 1.0, "", 0, False]
    entries.add(np.array([2, far], dtype=np.int64))
    assert entries.size == 4 and far in entries and len(entries) == 5
    assert entries.get(far) == [1, 1.0, "", 0, False] and list(entries)[-1] == far
    assert entries.checkout(np.array([1, far], dtype=np.int64))[1][0] == 1
    assert dict(entries.items())[far] == [1, 1.0, "", 0, False]


def test_the_limit_for_a_row_counts_each_rank_held_once() -> None:
    # 40,000 ranks held, every one also handed out as a live list: the limit is 4 x (held + 1)
    # = 160,004 (a rank beyond it is apart), not the double count's 320,004.
    entries = RankEntries(FIELDS)
    ranks = np.arange(40_000, dtype=np.int64)
    entries.checkout(ranks)
    entries[170_000] = entries.fresh()
    assert 170_000 in entries.far and entries.size == 40_000
    entries[150_000] = entries.fresh()
    assert 150_000 not in entries.far and entries.size == 150_001


def test_columns_end_at_the_world_size_the_job_said() -> None:
    # A 5,000-rank job reporting in frames of 2,000: doubling would make room for 8,000.
    entries, doubled = RankEntries(FIELDS), RankEntries(FIELDS)
    for first in range(0, 5_000, 2_000):
        ranks = np.arange(first, min(first + 2_000, 5_000), dtype=np.int64)
        entries.add(ranks, expected=5_000)
        doubled.add(ranks)
    assert entries == doubled and entries.size == doubled.size == 5_000
    assert len(entries._has) == 5_000 and len(doubled._has) == 8_000
    entries.add(np.array([6_000], dtype=np.int64), expected=5_000)  # past what it said
    assert entries.size == 6_001 and 6_000 in entries


def test_copies_and_pickles_are_equal_nan_and_all() -> None:
    entries = RankEntries(FIELDS)
    rng = random.Random(1)
    for r in rng.sample(range(100), 30):
        entries[r] = [r, rng.choice([math.nan, 0.25]), rng.choice(["", "a"]), r % 3, r % 2 == 0]
    assert copy.deepcopy(entries) == entries
    assert pickle.loads(pickle.dumps(entries)) == entries
    other = copy.deepcopy(entries)
    other.get(next(iter(other)))[3] = 99
    assert other != entries


def test_the_codec_stores_the_entries_as_lists_and_reads_them_back_as_columns() -> None:
    # lr_schedule keeps its ranks in RankEntries: a job round-trips, and a state stored when
    # it was a dict of lists (before the columns) reads back as the same columns.
    engine = Engine.with_builtin_detectors()
    layout = Layout.of(engine, "j")
    assert "r" in layout.entry_tables["lr_schedule"]
    rule = next(d for d in engine.detectors_for("j") if d.name == "lr_schedule")
    state = rule.new_job_state()
    state["r"][1] = [7, 3e-4, -1, math.nan, "", math.nan, 3e-4, 0, 0, 0, -1, *[math.nan] * 3, 0]
    job = JobState("j", world_size=3, ranks={r: RankState(r) for r in range(3)})
    job.slots["lr_schedule"] = state
    back = decode_job(encode_job(job, layout), layout)
    assert isinstance(back.slots["lr_schedule"]["r"], RankEntries)
    assert back.slots["lr_schedule"]["r"] == state["r"]

    job.slots["lr_schedule"] = dict(state, r=dict(state["r"].items()))  # the old dict of lists
    again = decode_job(encode_job(job, layout), layout)
    assert again.slots["lr_schedule"]["r"] == state["r"]
