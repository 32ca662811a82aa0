"""Cutting a stream of records into batches, so no source holds more than one batch."""

from collections.abc import Iterable, Iterator
from itertools import islice

from control_plane.connectors import Batch, Record


def batched(records: Iterable[Record], size: int) -> Iterator[Batch]:
    """`records` in lists of `size`, the last one shorter (itertools.batched needs Python 3.12)."""
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch
