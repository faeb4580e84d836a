"""Row chunks that keep memory linear in the number of points: one place for the chunk size of every loop
over a cloud (pairwise distances, field evaluations, neighbour search)."""

from __future__ import annotations

from collections.abc import Iterator

CHUNK_ELEMENTS = 1 << 22   # rows × width per chunk of a dense block (32 MiB of float64)
GATHER_ELEMENTS = 1 << 20  # pairs × dimension per chunk of gathered row differences


def row_chunks(n: int, width: int, budget: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive row ranges of ``range(n)``, each with about ``budget // width`` rows (at
    least one), so that a block of rows × ``width`` entries stays within ``budget`` elements."""
    step = max(1, budget // max(1, width))
    for s in range(0, n, step):
        yield s, min(n, s + step)


__all__ = ["CHUNK_ELEMENTS", "GATHER_ELEMENTS", "row_chunks"]
