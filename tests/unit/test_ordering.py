"""Publishing in id order whatever order the stores finish in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.ordering import PublishOrder


@given(st.permutations(list(range(30))), st.sets(st.integers(0, 29)))
def test_released_in_id_order_with_failures_skipped(finish_order: list[int], failed: set[int]) -> None:
    order: PublishOrder[int] = PublishOrder()
    for i in range(30):
        order.begin(i)
    released: list[int] = []
    for i in finish_order:
        released += order.finish(i, None if i in failed else i)
    assert released == [i for i in range(30) if i not in failed]
    assert len(order) == 0


def test_held_back_until_the_older_one_finishes() -> None:
    order: PublishOrder[str] = PublishOrder()
    order.begin(1)
    order.begin(2)
    assert order.finish(2, "b") == []
    assert order.finish(1, "a") == ["a", "b"]


def test_ids_must_be_begun_in_ascending_order() -> None:
    order: PublishOrder[str] = PublishOrder()
    order.begin(5)
    with pytest.raises(ValueError):
        order.begin(5)
