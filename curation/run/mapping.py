"""Old -> new image set IDs after copy-and-promote procedures: ``IdMapping``, ``id_mapping``, ``rekey``.

A promotion gives the content a new image set ID (API reference, CopyImageSet ``promoteToPrimary``: "If
successful, a new primary image set ID will be returned as the destination image set"), and no AHI call lets a
caller choose or keep one. The apply journal records each ``mapping`` (pre-plan ID -> new ID, with the new
version); apply's result carries it (``frame.attrs["id_mapping"]`` and the ``new_image_set_id`` column).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd

from curation.run.journal import RecordKind, read_journal

__all__ = ["IdMapping", "id_mapping", "mapping_from_records", "rekey"]


class IdMapping(Mapping[str, str]):
    """A read-only mapping of pre-plan image set IDs to the IDs their content lives under now; ``versions``
    maps each new ID to its version."""

    def __init__(self, pairs: Mapping[str, str] | None = None, versions: Mapping[str, str] | None = None) -> None:
        self._pairs = dict(pairs or {})
        self.versions: dict[str, str] = dict(versions or {})

    def __getitem__(self, key: str) -> str:
        return self._pairs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"IdMapping({self._pairs!r})"

    def then(self, later: Mapping[str, str]) -> IdMapping:
        """This mapping followed by ``later`` (P -> N then N -> R gives P -> R and N -> R)."""
        pairs = {old: later.get(new, new) for old, new in self._pairs.items()}
        pairs.update(later)
        versions = {**self.versions, **getattr(later, "versions", {})}
        return IdMapping(pairs, {new: versions[new] for new in pairs.values() if new in versions})

    def frame(self) -> pd.DataFrame:
        """One row per mapped image set: ImageSetID (pre-plan), new_image_set_id, version."""
        rows = [
            {"ImageSetID": old, "new_image_set_id": new, "version": self.versions.get(new)}
            for old, new in self._pairs.items()
        ]
        return pd.DataFrame(rows, columns=["ImageSetID", "new_image_set_id", "version"])


def mapping_from_records(records: list[dict[str, Any]]) -> IdMapping:
    """The mapping the ``mapping`` records of a journal hold."""
    pairs: dict[str, str] = {}
    versions: dict[str, str] = {}
    for record in records:
        if record.get("kind") == RecordKind.MAPPING:
            pairs[str(record["original"])] = str(record["new"])
            if record.get("version") is not None:
                versions[str(record["new"])] = str(record["version"])
    return IdMapping(pairs, versions)


def id_mapping(source: pd.DataFrame | str | os.PathLike[str] | IdMapping) -> IdMapping:
    """The old -> new image set IDs of an apply (or revert): from its result table, or from its journal."""
    if isinstance(source, IdMapping):
        return source
    if isinstance(source, pd.DataFrame):
        known = source.attrs.get("id_mapping")
        if isinstance(known, IdMapping):
            return known
        if "new_image_set_id" not in source.columns:
            return IdMapping()
        rows = source.dropna(subset=["new_image_set_id"])
        return IdMapping(dict(zip(rows["ImageSetID"], rows["new_image_set_id"], strict=True)))
    return mapping_from_records(read_journal(source))


def _rekey_frame(frame: pd.DataFrame, mapping: Mapping[str, str]) -> pd.DataFrame:
    out = frame.copy()
    if "ImageSetID" in (out.index.names or []):
        if isinstance(out.index, pd.MultiIndex):
            level = out.index.names.index("ImageSetID")
            values = [mapping.get(v, v) for v in out.index.levels[level]]
            out.index = out.index.set_levels(values, level=level, verify_integrity=False)
        else:
            out.index = pd.Index([mapping.get(v, v) for v in out.index], name="ImageSetID")
    if "ImageSetID" in out.columns:
        out["ImageSetID"] = [mapping.get(v, v) for v in out["ImageSetID"]]
    return out


def rekey(obj: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of ``obj`` with every mapped image set ID replaced (``obj`` itself is never changed).

    ``obj``: a DataFrame with an ``ImageSetID`` index level or column, or a ``Snapshot`` (its documents'
    ``ImageSetID``, its version IDs from ``mapping.versions`` and its primary flags; new IDs are primary). A
    rekeyed Snapshot keeps a session's frames aligned with the service; fetch again before planning anew.
    Unmapped IDs stay as they are.
    """
    if isinstance(obj, pd.DataFrame):
        return _rekey_frame(obj, mapping)
    from curation.frames.snapshot import Snapshot

    if isinstance(obj, Snapshot):
        return _rekey_snapshot(obj, mapping)
    raise TypeError(f"rekey takes a DataFrame or a Snapshot, not {type(obj).__name__}")


def _rekey_snapshot(snapshot: Any, mapping: Mapping[str, str]) -> Any:
    from curation.frames.snapshot import Snapshot

    versions = getattr(mapping, "versions", {})
    documents = []
    version_ids = {}
    for image_set_id in snapshot.image_set_ids:
        document = dict(snapshot.document(image_set_id))
        new = mapping.get(image_set_id, image_set_id)
        document["ImageSetID"] = new
        documents.append(document)
        version_ids[new] = versions.get(new, snapshot.version_ids.get(image_set_id))
    rekeyed = Snapshot.from_documents(
        documents,
        datastore_id=snapshot.datastore_id,
        version_ids={k: v for k, v in version_ids.items() if v is not None},
    )
    rekeyed.primary = {mapping.get(k, k): (True if k in mapping else v) for k, v in snapshot.primary.items()}
    return rekeyed
