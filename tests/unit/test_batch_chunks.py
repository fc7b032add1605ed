"""How ``append_many`` cuts one partition's rows into CQL batches (``batch_chunks``)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.scylla.store import batch_chunks
from domain.model import Author, Comment


def row(i: int, text: str, name: str = "n", client_id: str | None = None) -> Comment:
    return Comment(id=i, video_id="v", author=Author("u", name), text=text, created_at=0, client_id=client_id)


def size(c: Comment) -> int:
    return len(c.text.encode()) + len(c.author.id.encode()) + len(c.author.name.encode()) + len((c.client_id or "").encode()) + 48


rows = st.lists(
    st.builds(row, st.integers(0, 10**6), st.text(max_size=300), st.text(max_size=20), st.none() | st.text(max_size=20)),
    max_size=80,
)


@given(rows, st.integers(1, 40), st.integers(1, 6000))
def test_chunks_keep_order_and_respect_both_limits(cs: list[Comment], max_rows: int, max_bytes: int) -> None:
    chunks = batch_chunks(cs, max_rows, max_bytes)
    assert [c for chunk in chunks for c in chunk] == cs  # every row once, in order
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_rows
        # Over the byte budget only as a row alone (it has to go somewhere).
        assert len(chunk) == 1 or sum(size(c) for c in chunk) <= max_bytes
    # Greedy: a chunk is cut only because the next row would not fit.
    for a, b in itertools.pairwise(chunks):
        assert len(a) == max_rows or sum(size(c) for c in a) + size(b[0]) > max_bytes


def test_comments_of_the_seed_size_go_sixteen_to_a_batch_under_four_kib() -> None:
    cs = [row(i, "x" * 150) for i in range(40)]  # ~200 bytes a row
    assert [len(chunk) for chunk in batch_chunks(cs, 16, 4096)] == [16, 16, 8]
    big = [row(i, "é" * 1000) for i in range(5)]  # 2,000 bytes of text each
    assert [len(chunk) for chunk in batch_chunks(big, 16, 4096)] == [1, 1, 1, 1, 1]
    assert batch_chunks([], 16, 4096) == []
    with pytest.raises(ValueError):
        batch_chunks(cs, 0, 4096)
