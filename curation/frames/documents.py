"""A snapshot's documents, held as given: dicts, or the fetched blobs (bytes) parsed again only when asked for.

A fetched document kept as a dict costs about 4x its JSON bytes; its gzip blob as AHI sends it about a tenth.
``Documents`` is a read-only mapping ``ImageSetID -> document`` over either, so the frames (which hold every
value) and the exact documents (which plan and verify need) can live side by side in little memory. Parsed
blobs are remembered for the few most recent image sets (a plan reads a document several times in a row).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from curation.model.document import parse_document

__all__ = ["Documents"]

_RECENT = 8


class Documents(Mapping[str, dict[str, Any]]):
    """Read-only ``ImageSetID -> document``; values are dicts given or parsed from blobs (do not modify them)."""

    def __init__(
        self,
        dicts: Mapping[str, dict[str, Any]] | None = None,
        blobs: Mapping[str, bytes] | None = None,
        order: Iterable[str] | None = None,
    ) -> None:
        self._dicts: dict[str, dict[str, Any]] = dict(dicts or {})
        self._blobs: dict[str, bytes] = {k: v for k, v in (blobs or {}).items() if k not in self._dicts}
        known = [*self._dicts, *self._blobs]
        self._order: list[str] = known if order is None else [k for k in order if k in self._dicts or k in self._blobs]
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __getitem__(self, image_set_id: str) -> dict[str, Any]:
        document = self._dicts.get(image_set_id)
        if document is not None:
            return document
        document = self._recent.get(image_set_id)
        if document is not None:
            self._recent.move_to_end(image_set_id)
            return document
        document = parse_document(self._blobs[image_set_id])
        self._recent[image_set_id] = document
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        return document

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, image_set_id: object) -> bool:
        return image_set_id in self._dicts or image_set_id in self._blobs

    def blob(self, image_set_id: str) -> bytes | None:
        """The bytes as fetched (gzip or JSON), or None for a document given as a dict."""
        return self._blobs.get(image_set_id)

    @property
    def compact(self) -> bool:
        """True when every document is held as its blob."""
        return not self._dicts

    def without(self, image_set_ids: Iterable[str]) -> Documents:
        """The same documents less ``image_set_ids``."""
        gone = set(image_set_ids)
        return Documents(
            {k: v for k, v in self._dicts.items() if k not in gone},
            {k: v for k, v in self._blobs.items() if k not in gone},
            self._order,
        )
