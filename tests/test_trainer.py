"""The loops run with the heap alive before them frozen out of Python's collector, and hand it back after."""

from __future__ import annotations

import gc

import pytest

from localizer.trainer import frozen_heap


def test_the_heap_is_frozen_during_the_loop_and_handed_back_after_an_error_too():
    before = gc.get_freeze_count()
    alive = [[i] for i in range(1000)]  # containers alive before the loop
    with frozen_heap():
        assert gc.get_freeze_count() >= before + len(alive)
        cycle: list = []
        cycle.append(cycle)  # garbage made in the loop is still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == before
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("a failing loop")
    assert gc.get_freeze_count() == before
