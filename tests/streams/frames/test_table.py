"""RankTable: a rule's per-rank state as columns; rows read back as the state dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from rankwatch.streams.detectors.loss import LossState
from rankwatch.streams.detectors.memory import MemoryState
from rankwatch.streams.frames import RankTable


@dataclass
class _State:
    level: float = 1.5
    n: int = 3
    active: bool = True
    seed: list[float] = field(default_factory=list)


def test_new_rows_start_at_the_state_defaults_with_their_own_lists() -> None:
    table = RankTable(_State)
    table.grow(3)
    assert table.row(2) == _State()
    table.row(0).seed.append(1.0)
    assert table.row(0).seed == [1.0] and table.row(1).seed == []  # not one shared list


def test_numbers_come_back_as_python_values() -> None:
    table = RankTable(_State, capacity=2)
    state = table.row(1)
    assert type(state.level) is float and type(state.n) is int and type(state.active) is bool


def test_growing_keeps_what_was_stored() -> None:
    table = RankTable(_State)
    table.grow(2)
    table.store(1, _State(level=9.0, n=1, active=False, seed=[2.0]))
    table.grow(100)
    assert table.row(1) == _State(level=9.0, n=1, active=False, seed=[2.0])
    assert len(table) == 100 and len(table.column("level")) == 100
    table.grow(50)  # never shrinks
    assert len(table) == 100


def test_growing_makes_room_for_twice_the_rows_but_not_past_the_expected_size() -> None:
    table = RankTable(_State)
    table.grow(600)
    table.grow(700)  # doubled: room for 1,200
    assert table.nbytes() == 1200 * (8 + 8 + 1 + 8)
    sized = RankTable(_State)
    sized.grow(600, expected=1000)
    sized.grow(700, expected=1000)  # the job said 1,000 ranks: room for those alone
    assert sized.nbytes() == 1000 * (8 + 8 + 1 + 8) and len(sized) == 700
    sized.grow(1500, expected=1000)  # more than it said: doubling again
    assert len(sized) == 1500 and sized.row(1499) == _State()


def test_states_at_and_store_states_round_trip() -> None:
    table = RankTable(_State, capacity=5)
    ranks = np.array([4, 1], dtype=np.int64)
    states = table.states_at(ranks)
    states[0].level, states[1].seed = 7.0, [3.0]
    table.store_states(ranks, states)
    assert table.row(4).level == 7.0 and table.row(1).seed == [3.0] and table.row(0).level == 1.5


def test_rows_outside_the_table_are_refused() -> None:
    table = RankTable(_State, capacity=2)
    with pytest.raises(IndexError, match="rank 2 has no row"):
        table.row(2)
    with pytest.raises(IndexError, match="outside"):
        table.states_at(np.array([5], dtype=np.int64))


def test_only_dataclasses_make_tables() -> None:
    with pytest.raises(TypeError, match="not a dataclass"):
        RankTable(dict)  # type: ignore[type-var]


def test_the_rules_states_fit_in_tables() -> None:
    # The per-rank rules' own states: numbers become numeric columns, lists object columns.
    for state_type in (LossState, MemoryState):
        table = RankTable(state_type, capacity=4)
        assert repr(table.row(3)) == repr(state_type())  # repr: nan == nan
    loss = RankTable(LossState, capacity=1024)
    assert loss.nbytes() <= 9 * 8 * 1024 * 2  # a few numbers per rank, not objects
