"""Snapshot: fetched AHI documents (with datastore and version IDs) and their level frames, saved and loaded.

The documents are the truth; the frames (``studies``, ``series``, ``instances``, ``frames``, ``wide``) are built
lazily from them by ``curation.frames.flattening`` and cached. Every frame handed out is a copy whose cells are
immutable (``curation.frames.cells``), so editing it never changes the snapshot.

``wide`` joins every level at instance level: studies columns, then series, then instance columns. A name
already taken by a higher level is qualified with the lower one (``@Series:Name``, ``@Instance:Name``): the
higher level keeps the plain name, as AHI normalizes attributes upwards.

On disk (``save``/``load``) a snapshot is a directory: ``manifest.json`` (format version, datastore ID,
version IDs, image set order, column levels and codecs), ``documents.jsonl.gz`` (one raw document per line),
and one Parquet file per frame plus ``failures.parquet``, written by ``curation.frames.exchange.write_frame``
(native Arrow types; object cells as JSON text), so loading restores them exactly. ``to_csv`` and
``to_parquet`` export each frame with ``curation.to_csv``/``curation.to_parquet``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, cast

import orjson
import pandas as pd
import pyarrow as pa

from curation.frames.documents import Documents
from curation.frames.exchange import read_frame, to_csv, to_parquet, write_frame
from curation.frames.flattening import (
    Flattened,
    FlattenError,
    Part,
    assemble,
    batch_part,
    check,
    copy_value,
    failures_frame,
    flatten_many,
    split_column,
    wide_codecs,
    wide_view,
)
from curation.frames.gcpause import gc_paused
from curation.model import dictionary as dicom
from curation.model.document import GZIP_MAGIC, DocumentError, parse_document

FORMAT = "ahi-curation-snapshot"
FORMAT_VERSION = 2
#: Older formats whose frames are rebuilt from the documents (version 1 held every cell as JSON text).
REBUILT_VERSIONS = (1,)
FRAME_NAMES = ("studies", "series", "instances", "frames")
FAILURE_COLUMNS = ("ImageSetID", "stage", "error")
_INDEX_PREFIX = "@index:"


def _failures(failures: pd.DataFrame | list | None) -> pd.DataFrame:
    if failures is None:
        return failures_frame([])
    if isinstance(failures, pd.DataFrame):
        frame = failures.reset_index(drop=True).copy()
    else:
        rows = [
            dict(zip(FAILURE_COLUMNS, r, strict=False)) if not isinstance(r, Mapping) else dict(r) for r in failures
        ]
        frame = pd.DataFrame(rows, dtype=object)
    for column in FAILURE_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    rest = [c for c in frame.columns if c not in FAILURE_COLUMNS]
    return frame[[*FAILURE_COLUMNS, *rest]].astype(object)


#: Documents are parsed and their columns built this many instances at a time (then freed), the frames made
#: once from all the batches' columns: the peak of parsed dicts stays one batch, and a batch this small is still
#: in the CPU cache while its columns are read out of it (measured: the instance columns of batches of 2,500
#: took 1.4x as long).
BATCH_INSTANCES = 500


def _parsed(image_set_id: str, blob: bytes) -> dict[str, Any]:
    """The document of one fetched blob; a DocumentError naming the image set when it is not its document."""
    try:
        document = parse_document(blob)
    except DocumentError as exc:
        raise DocumentError(f"image set {image_set_id}: {exc}") from exc
    if document.get("ImageSetID") != image_set_id:
        raise DocumentError(f"image set {image_set_id}: document has ImageSetID {document.get('ImageSetID')!r}")
    return document


def _instance_count(document: dict[str, Any]) -> int:
    study = document.get("Study")
    series = study.get("Series") if isinstance(study, dict) else None
    if not isinstance(series, dict):
        return 0
    return sum(len(node.get("Instances") or {}) for node in series.values() if isinstance(node, dict))


def _flatten_blobs(blobs: Mapping[str, bytes], kept: dict[str, bytes], extra: list[dict[str, Any]]) -> Flattened:
    """Parse and flatten ``blobs`` in batches of about ``BATCH_INSTANCES`` instances (``kept``: the blobs that
    parsed, ``extra``: the parse failures); the batches are concatenated, or, if they disagree on a column's
    codec, everything is flattened again at once."""
    parts: list[Part] = []
    failures: list[tuple[str | None, str, str]] = []
    levels: dict[str, str] = {}
    batch: list[dict[str, Any]] = []
    size = 0
    for number, (image_set_id, blob) in enumerate(blobs.items()):
        try:
            document = _parsed(image_set_id, blob)
        except DocumentError as exc:
            extra.append(
                {
                    "ImageSetID": image_set_id,
                    "stage": "parse",
                    "code": type(exc).__name__,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
        else:
            kept[image_set_id] = blob
            batch.append(document)
            size += _instance_count(document)
            del document
        if batch and (size >= BATCH_INSTANCES or number == len(blobs) - 1):
            parts.append(batch_part(batch, failures, levels))
            batch.clear()
            size = 0
    flat = assemble(parts) if parts else None
    if flat is None:
        parts.clear()
        return flatten_many([_parsed(k, v) for k, v in kept.items()])
    flat.failures = failures_frame(failures)
    return flat


def _release_arrow_memory() -> None:
    """Hand the memory Arrow's allocator keeps cached back to the OS: the ``str`` columns of every batch are
    freed once the batches are concatenated, and the allocator (mimalloc or jemalloc) would keep those pages
    (about 7 MB at 20,000 instances, a quarter of the snapshot's retained memory there). Takes under a
    millisecond; nothing in use is touched."""
    pa.default_memory_pool().release_unused()


def _json_line(documents: Documents, image_set_id: str) -> bytes:
    """One document as a JSON line: its blob's own bytes when they are one line, else re-serialized."""
    blob = documents.blob(image_set_id)
    if blob is not None:
        text = gzip.decompress(blob) if blob[:2] == GZIP_MAGIC else bytes(blob)
        if b"\n" not in text and b"\r" not in text:
            return text + b"\n"
    return orjson.dumps(documents[image_set_id]) + b"\n"


class Snapshot:
    """Fetched documents + lazily built level frames. Build with ``Snapshot.from_documents``."""

    def __init__(
        self,
        documents: list[dict[str, Any]] | Documents,
        *,
        datastore_id: str,
        version_ids: dict[str, str],
        failures: pd.DataFrame,
        flattened: Flattened | None = None,
    ) -> None:
        self._documents = (
            documents if isinstance(documents, Documents) else Documents({doc["ImageSetID"]: doc for doc in documents})
        )
        self.datastore_id = datastore_id
        self._version_ids = dict(version_ids)
        self._failures = failures
        self._flat = flattened
        self._cache: dict[str, pd.DataFrame] = {}
        self._private_vrs: dict[str, str] | None = None
        #: isPrimary of each image set when known (e.g. from SearchImageSets summaries); saved with the snapshot
        self.primary: dict[str, bool] = {}

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[dict[str, Any]],
        *,
        datastore_id: str,
        version_ids: dict[str, str] | None = None,
        failures: pd.DataFrame | list | None = None,
    ) -> Snapshot:
        """A snapshot of ``documents`` (kept as given, not copied: hand over documents you own).

        Documents that cannot be flattened (missing level, unknown VR, duplicate UIDs, an ImageSetID seen
        before) are left out and added to ``failures`` with stage ``"flatten"``; frames are built lazily.
        """
        table = _failures(failures)
        kept, extra, seen = [], [], set()
        for document in documents:
            try:
                image_set_id = check(document)
                if image_set_id in seen:
                    raise FlattenError(image_set_id, "duplicate ImageSetID in the batch")
            except FlattenError as exc:
                extra.append({"ImageSetID": exc.image_set_id, "stage": "flatten", "error": str(exc)})
                continue
            seen.add(image_set_id)
            kept.append(document)
        if extra:
            table = pd.concat([table, pd.DataFrame(extra, dtype=object)], ignore_index=True).astype(object)
        versions = {k: str(v) for k, v in (version_ids or {}).items()}
        return cls(kept, datastore_id=datastore_id, version_ids=versions, failures=table)

    @classmethod
    def from_blobs(
        cls,
        blobs: Mapping[str, bytes],
        *,
        datastore_id: str,
        version_ids: dict[str, str] | None = None,
        failures: pd.DataFrame | list | None = None,
    ) -> Snapshot:
        """A snapshot of fetched metadata blobs (``{ImageSetID: bytes}``, gzip or JSON), held compactly.

        The blobs are parsed and their columns built in batches (``BATCH_INSTANCES``) with the cyclic GC paused
        (``gc_paused``: a parsed batch is a large acyclic graph), each frame made once from all the batches'
        columns (``flattening.assemble``); then only the blobs and the frames are kept:
        ``documents`` parses a blob again when asked for it. A blob that does not parse, or whose document
        cannot be flattened or names another image set, is a failure (stage ``"parse"`` or ``"flatten"``).
        """
        table = _failures(failures)
        kept: dict[str, bytes] = {}
        extra: list[dict[str, Any]] = []
        with gc_paused():
            flat = _flatten_blobs(blobs, kept, extra)
        _release_arrow_memory()
        if len(flat.failures):
            kept = {k: v for k, v in kept.items() if k not in set(flat.failures["ImageSetID"])}
            extra.extend(cast(list[dict[str, Any]], flat.failures.to_dict("records")))
            flat.failures = failures_frame([])
        if extra:
            table = pd.concat([table, pd.DataFrame(extra, dtype=object)], ignore_index=True).astype(object)
        versions = {k: str(v) for k, v in (version_ids or {}).items() if k in kept}
        return cls(
            Documents(blobs=kept, order=blobs),
            datastore_id=datastore_id,
            version_ids=versions,
            failures=table,
            flattened=flat,
        )

    # --- contents ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._documents)

    def __repr__(self) -> str:
        return f"Snapshot(datastore_id={self.datastore_id!r}, image_sets={len(self)}, failures={len(self._failures)})"

    def _repr_html_(self) -> str:
        """The notebook display: image sets, series, instances, failures, primary or not (``curation.ui.display``)."""
        from curation.ui.display import snapshot_html

        return snapshot_html(self)

    @property
    def image_set_ids(self) -> list[str]:
        """Image set IDs in fetch order."""
        return list(self._documents)

    @property
    def documents(self) -> Mapping[str, dict[str, Any]]:
        """The documents as fetched, by ImageSetID (read-only: do not modify them; a snapshot made
        ``from_blobs`` parses a blob again when one is asked for)."""
        return self._documents

    def document(self, image_set_id: str) -> dict[str, Any]:
        """A copy of one document."""
        return copy_value(self._documents[image_set_id])

    @property
    def version_ids(self) -> dict[str, str]:
        """The version ID of each document, by ImageSetID (a copy)."""
        return dict(self._version_ids)

    @property
    def failures(self) -> pd.DataFrame:
        """Per-image-set failures: ImageSetID, stage (e.g. "fetch", "parse", "flatten"), error."""
        return self._failures.copy()

    # --- frames ------------------------------------------------------------------------------------------

    def _flattened(self) -> Flattened:
        if self._flat is None:
            flat = flatten_many(self._documents.values(), copy=False)
            if len(flat.failures):
                self._documents = self._documents.without(set(flat.failures["ImageSetID"]))
                self._failures = pd.concat([self._failures, flat.failures], ignore_index=True).astype(object)
            self._flat = flat
        return self._flat

    def _frame(self, name: str) -> pd.DataFrame:
        """A copy of a cached frame: its arrays are copied, its cells are immutable and so shared."""
        if name == "wide":
            if "wide" not in self._cache:
                flat = self._flattened()
                self._cache["wide"] = wide_view(flat.studies, flat.series, flat.instances)
            return self._cache["wide"].copy()
        return getattr(self._flattened(), name).copy()

    def codecs(self, name: str) -> dict[str, str]:
        """How each column of frame ``name`` holds its cells (``curation.frames.cells``; a copy)."""
        flat = self._flattened()
        if name == "wide":
            columns = {n: list(getattr(flat, n).columns) for n in ("studies", "series", "instances")}
            return wide_codecs(flat.codecs, columns)
        return dict(flat.codecs.get(name, {}))

    @property
    def studies(self) -> pd.DataFrame:
        """Patient and Study attributes, one row per image set (index ImageSetID). A copy."""
        return self._frame("studies")

    @property
    def series(self) -> pd.DataFrame:
        """Series attributes (index ImageSetID, SeriesInstanceUID). A copy."""
        return self._frame("series")

    @property
    def instances(self) -> pd.DataFrame:
        """Instance attributes (index ImageSetID, SeriesInstanceUID, SOPInstanceUID). A copy."""
        return self._frame("instances")

    @property
    def frames(self) -> pd.DataFrame:
        """One row per image frame (instance index + 1-based ``frame``). A copy."""
        return self._frame("frames")

    @property
    def wide(self) -> pd.DataFrame:
        """Instance-level view with every level joined (see the module docstring for name collisions)."""
        return self._frame("wide")

    def cached_flattened(self) -> Flattened:
        """The cached level frames themselves, not copies: for ``diff`` and ``plan``, which never modify them."""
        return self._flattened()

    @property
    def flattened(self) -> Flattened:
        """The level frames as one ``Flattened`` (copies), e.g. for ``curation.frames.flattening.unflatten``."""
        flat = self._flattened()
        studies, series, instances, frames = (getattr(flat, n).copy() for n in FRAME_NAMES)
        return Flattened(
            studies,
            series,
            instances,
            frames,
            dict(flat.levels),
            flat.failures.copy(),
            codecs={name: dict(codecs) for name, codecs in flat.codecs.items()},
        )

    # --- column metadata ---------------------------------------------------------------------------------

    def level(self, column: str) -> str | None:
        """Level of a column of any frame: where the documents put it.

        ``@Level:Name`` columns are at ``Level``; a plain name present at several levels answers the highest
        (the one ``wide`` shows under the plain name). Document-level keys (``@SchemaVersion``) answer None;
        ``frames`` columns answer "Instance" (ImageFrames belong to the instance node).
        """
        flat = self._flattened()
        qualifier, _, node_key = split_column(column)
        if qualifier is not None:
            return qualifier
        if column in flat.studies.columns:
            if node_key:
                return None
            return flat.levels.get(column, "Study")
        if column in flat.series.columns:
            return "Series"
        if column in flat.instances.columns or column in flat.frames.columns:
            return "Instance"
        raise KeyError(f"no column {column!r} in this snapshot")

    def vr(self, column: str) -> str | None:
        """VR of a column: pydicom's dictionary for keywords, the documents' ``DICOMVRs`` for private tags.

        None for non-DICOM columns (``@...`` node keys, ``frames`` columns) and for keys neither knows.
        Ambiguous dictionary VRs are returned as pydicom gives them (``"US or SS"``).
        """
        _, key, node_key = split_column(column)
        flat = self._flattened()
        if node_key or (column in flat.frames.columns and column not in flat.instances.columns):
            return None
        return dicom.vr_of(key, self._dicom_vrs())

    def dicom_vrs(self) -> dict[str, str]:
        """Every DICOMVRs entry of the documents (first seen wins; a copy)."""
        return dict(self._dicom_vrs())

    def _dicom_vrs(self) -> dict[str, str]:
        """Every DICOMVRs entry of the documents (first seen wins), read from the instances frame."""
        if self._private_vrs is None:
            found: dict[str, str] = {}
            instances = self._flattened().instances
            if "@DICOMVRs" in instances.columns:
                for vrs in dict.fromkeys(v for v in instances["@DICOMVRs"].tolist() if isinstance(v, dict)):
                    for tag, vr in vrs.items():
                        found.setdefault(tag, vr)
            self._private_vrs = found
        return self._private_vrs

    def vrs(self, frame: pd.DataFrame) -> dict[str, str | None]:
        """``{column: VR}`` for the columns of a frame of this snapshot (unknown columns: dictionary VR)."""
        out = {}
        for column in frame.columns:
            _, key, node_key = split_column(column)
            out[column] = None if node_key else dicom.vr_of(key, self._dicom_vrs())
        return out

    # --- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the snapshot to directory ``path`` (created; existing snapshot files are replaced)."""
        os.makedirs(path, exist_ok=True)
        flat = self._flattened()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "datastore_id": self.datastore_id,
            "version_ids": self._version_ids,
            "image_set_ids": self.image_set_ids,
            "levels": flat.levels,
            "codecs": flat.codecs,
            "primary": dict(self.primary),
            "frames": {},
        }
        with gzip.open(os.path.join(path, "documents.jsonl.gz"), "wb", compresslevel=6) as handle:
            for image_set_id in self._documents:
                handle.write(_json_line(self._documents, image_set_id))
        for name in FRAME_NAMES:
            manifest["frames"][name] = write_frame(getattr(flat, name), os.path.join(path, f"{name}.parquet"))
        manifest["frames"]["failures"] = write_frame(self._failures, os.path.join(path, "failures.parquet"))
        with open(os.path.join(path, "manifest.json"), "w") as handle:
            json.dump(manifest, handle, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Snapshot:
        """Read a snapshot written by ``save``."""
        with open(os.path.join(path, "manifest.json")) as handle:
            manifest = json.load(handle)
        version = manifest.get("format_version")
        if manifest.get("format") != FORMAT or (version != FORMAT_VERSION and version not in REBUILT_VERSIONS):
            raise ValueError(f"{path} is not an ahi-curation snapshot of format version {FORMAT_VERSION}")
        with gzip.open(os.path.join(path, "documents.jsonl.gz"), "rb") as handle:
            documents = [orjson.loads(line) for line in handle if line.strip()]
        failures = read_frame(os.path.join(path, "failures.parquet"), manifest["frames"]["failures"])
        flat = None
        if version == FORMAT_VERSION:
            frames = {
                name: read_frame(os.path.join(path, f"{name}.parquet"), manifest["frames"][name])
                for name in FRAME_NAMES
            }
            flat = Flattened(
                **frames, levels=dict(manifest["levels"]), failures=failures_frame([]), codecs=manifest["codecs"]
            )
        snapshot = cls(
            documents,
            datastore_id=manifest["datastore_id"],
            version_ids=manifest["version_ids"],
            failures=failures.reset_index(drop=True),
            flattened=flat,
        )
        snapshot.primary = {k: bool(v) for k, v in manifest.get("primary", {}).items()}
        return snapshot

    def to_csv(self, directory: str | os.PathLike) -> list[str]:
        """Export the level frames as ``<frame>.csv`` files (``curation.to_csv``); returns the paths."""
        return self._export(directory, "csv")

    def to_parquet(self, directory: str | os.PathLike) -> list[str]:
        """Export the level frames as ``<frame>.parquet`` files (``curation.to_parquet``); returns the paths."""
        return self._export(directory, "parquet")

    def _export(self, directory: str | os.PathLike, kind: str) -> list[str]:
        os.makedirs(directory, exist_ok=True)
        paths = []
        flat = self._flattened()
        for name in FRAME_NAMES:
            target = os.path.join(directory, f"{name}.{kind}")
            (to_csv if kind == "csv" else to_parquet)(getattr(flat, name), target)
            paths.append(target)
        return paths
