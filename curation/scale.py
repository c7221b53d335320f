"""Whole-datastore curation on Dask: partitioned Parquet snapshots, partition-wise diff and plan, SQL over them.

Needs the optional ``scale`` extra (``pip install 'ahi-curation[scale]'``: dask[distributed] and duckdb).

- ``fetch_to_parquet(endpoint, datastore_id, path, client=...)``: the driver pages SearchImageSets (IDs,
  versions, primary flags, study UIDs: small) and cuts the image sets into partitions of about
  ``partition_size``, keeping each study whole (so ``includeStudyImageSets`` folding stays inside one
  partition). Each partition is fetched, flattened and written by a Dask task on a worker, with its own boto3
  client (from a picklable ``ClientFactory``) under its share of the global rate limit (``rate`` divided by
  the number of partitions running at once). The driver only ever holds the listing and per-partition
  summaries, never documents or frames.
- On disk, ``path`` holds ``manifest.json`` (datastore ID, version IDs, image set order, partitions and their
  column schemas, failures), ``documents/part-NNNNN.parquet`` (each partition's metadata blobs exactly as
  fetched, gzip bytes, with their ImageSetID) and one
  Parquet dataset per level, ``studies/``, ``series/``, ``instances/``, ``frames/``, one file per partition,
  each written exactly as ``Snapshot.save`` writes its frames (index levels as ``@index:<name>`` columns,
  native Arrow types, object cells as JSON text).
- ``open_snapshot(path)``: a Dask DataFrame per level, one partition per snapshot partition (each holds
  whole image sets). Dask has no MultiIndex: the index is ``ImageSetID`` and the other index levels are the
  leading columns (``SeriesInstanceUID``, ``SOPInstanceUID``, ``frame``); a DICOM attribute named like one
  of them is ``@Series:SeriesInstanceUID`` / ``@Instance:SOPInstanceUID`` (as ``Snapshot.to_csv`` does).
  Cells are decoded exactly as ``Snapshot.load`` decodes them. ``to_pandas`` turns a partition (or a
  computed result) back into the Snapshot's frame shape. The files are read with ``dask.dataframe.from_map``
  rather than ``read_parquet``: partitions hold different columns (a column can even be JSON text in one and
  ``Int64`` in another), and each read conforms its partition to the snapshot-wide schema of the manifest.
  ``save_frames`` writes edited frames back the same way (lossless), for ``diff`` or a later session.
- ``diff(snapshot, edited)`` and ``plan(changes)``: the in-memory ``curation.curate.differ.diff`` and
  ``curation.curate.planner.plan``, run per partition on a Snapshot of that partition's documents, against the edited
  partition holding the same image sets. Edits that keep the partitioning (filters, ``assign``, ``where``,
  ``map_partitions``) are aligned by construction; a repartitioned frame is refused. The changes and
  requests are those of the in-memory path, in the same order; problem rows are the same, listed partition
  by partition. Applying stays one rate-limited, journaled stream: ``curation.run.applying.apply(plan, client,
  journal)`` on the plan ``plan`` returns (AHI's update quota is per account, 0.25/s: nothing to gain from
  spreading it over workers).
- ``sql(path, query)``: DuckDB over the Parquet files, with views ``studies``, ``series``, ``instances`` and
  ``frames`` (index levels as plain columns, object cells as DuckDB ``JSON``: ``Modality->>'$' = 'CT'``, the
  frames' pyramids as a native ``STRUCT`` list);
  JSON results are decoded and the index restored, so the frame is one the rest of the toolkit takes.

The same code runs on a ``LocalCluster`` or any scheduler (``client=Client("tcp://...")``); ``path`` must
then be a directory every worker and the driver can read and write (a shared filesystem).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curation.curate.changeset import ChangeSet, empty_changes, empty_problems
from curation.frames.cells import PYRAMID_DTYPE
from curation.frames.exchange import decode_cell, read_frame, write_frame
from curation.frames.flattening import (
    FRAME_INDEX,
    INSTANCE_INDEX,
    SERIES_INDEX,
    STUDY_INDEX,
    build_index,
)
from curation.frames.snapshot import FRAME_NAMES, Snapshot
from curation.model.document import parse_document
from curation.run.fetching import CONTROL_QUOTA, DEFAULT_RETRIES, GET_METADATA_QUOTA, fetch_documents, iter_search_pages
from curation.run.retries import RateLimiter, RetryPolicy

if TYPE_CHECKING:
    from curation.curate.updateplan import UpdatePlan

__all__ = [
    "ClientFactory",
    "ScaleSnapshot",
    "diff",
    "fetch_to_parquet",
    "open_snapshot",
    "plan",
    "save_frames",
    "sql",
    "to_flat",
    "to_pandas",
]

FORMAT = "ahi-curation-scale-snapshot"
EDITS_FORMAT = "ahi-curation-scale-frames"
FORMAT_VERSION = 2
INDEXES = {"studies": STUDY_INDEX, "series": SERIES_INDEX, "instances": INSTANCE_INDEX, "frames": FRAME_INDEX}
QUALIFIERS = {"studies": "Study", "series": "Series", "instances": "Instance", "frames": "Instance"}
_INSTALL = "curation.scale needs the 'scale' extra: pip install 'ahi-curation[scale]' (dask[distributed], duckdb)"


def _dask() -> Any:
    try:
        import dask
        import dask.dataframe
        import distributed  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL) from exc
    return dask


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL) from exc
    return duckdb


# --- clients on the workers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientFactory:
    """A picklable recipe for a boto3 ``medical-imaging`` client: each worker builds its own from it.

    For AWS give ``region_name`` (and ``profile_name`` if needed): credentials are resolved on each worker as
    boto3 always does. For the embedded service (``ahi-curation serve``) use ``ClientFactory.local(url)``.
    """

    endpoint_url: str | None = None
    region_name: str | None = None
    profile_name: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    inject_host_prefix: bool = True
    max_pool_connections: int = 16
    config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def local(cls, endpoint_url: str, **kwargs: Any) -> ClientFactory:
        """Clients for an AHI-compatible endpoint such as the embedded server (dummy keys, no host prefix)."""
        kwargs.setdefault("region_name", "us-east-1")
        kwargs.setdefault("aws_access_key_id", "local")
        kwargs.setdefault("aws_secret_access_key", "local")
        return cls(endpoint_url=str(endpoint_url), inject_host_prefix=False, **kwargs)

    def __call__(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile_name) if self.profile_name else boto3
        config = Config(
            inject_host_prefix=self.inject_host_prefix,
            max_pool_connections=self.max_pool_connections,
            **dict(self.config),
        )
        return session.client(
            "medical-imaging",
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            config=config,
        )


def _factory(source: str | Callable[[], Any]) -> Callable[[], Any]:
    if isinstance(source, str):
        return ClientFactory.local(source)
    if callable(source):
        return source
    raise TypeError("give an endpoint URL or a picklable callable returning a boto3 medical-imaging client")


# --- the on-disk snapshot --------------------------------------------------------------------------------


class ScaleSnapshot:
    """A partitioned snapshot on disk: the manifest in memory (small), documents and frames read per partition."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(os.path.join(self.path, "manifest.json")) as handle:
            manifest = json.load(handle)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.path} is not an ahi-curation scale snapshot of format version {FORMAT_VERSION}")
        self.manifest = manifest
        self.datastore_id: str = manifest["datastore_id"]
        self.partitions: list[dict[str, Any]] = manifest["partitions"]
        self.levels: dict[str, str] = manifest["levels"]
        self._where = {i: n for n, p in enumerate(self.partitions) for i in p["image_set_ids"]}

    def __repr__(self) -> str:
        return (
            f"ScaleSnapshot({self.path!r}, datastore_id={self.datastore_id!r}, image_sets={len(self._where)}, "
            f"partitions={len(self.partitions)}, failures={len(self.manifest['failures'])})"
        )

    def __len__(self) -> int:
        return len(self._where)

    @property
    def image_set_ids(self) -> list[str]:
        return [i for p in self.partitions for i in p["image_set_ids"]]

    @property
    def version_ids(self) -> dict[str, str]:
        return {k: v for p in self.partitions for k, v in p["version_ids"].items()}

    @property
    def primary(self) -> dict[str, bool]:
        return {k: v for p in self.partitions for k, v in p["primary"].items()}

    @property
    def failures(self) -> pd.DataFrame:
        """Image sets that could not be fetched, parsed or flattened (ImageSetID, stage, error, ...)."""
        rows = self.manifest["failures"]
        columns = list(dict.fromkeys(["ImageSetID", "stage", "error", *(k for r in rows for k in r)]))
        return pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype=object) for c in columns})

    def partition_of(self, image_set_id: str) -> int | None:
        return self._where.get(image_set_id)

    def documents(self, partition: int) -> list[dict[str, Any]]:
        """The raw documents of one partition."""
        return _read_documents(self.path, self.partitions[partition])

    def snapshot(self, partition: int) -> Snapshot:
        """An in-memory Snapshot of one partition (its documents, versions and primary flags)."""
        return _partition_snapshot(self.path, self.datastore_id, self.partitions[partition])

    def to_snapshot(self) -> Snapshot:
        """Everything as one in-memory Snapshot (only for data that fits in memory)."""
        blobs = {k: v for part in self.partitions for k, v in _read_blobs(self.path, part).items()}
        snapshot = Snapshot.from_blobs(
            blobs, datastore_id=self.datastore_id, version_ids=self.version_ids, failures=self.failures
        )
        snapshot.primary = self.primary
        return snapshot


def _opened(path: str) -> ScaleSnapshot:
    """The ScaleSnapshot at ``path``, parsed once per process while its manifest is unchanged (for tasks)."""
    return _cached(path, os.stat(os.path.join(path, "manifest.json")).st_mtime_ns)


@lru_cache(maxsize=8)
def _cached(path: str, mtime: int) -> ScaleSnapshot:
    return ScaleSnapshot(path)


def _read_blobs(path: str, part: Mapping[str, Any]) -> dict[str, bytes]:
    """The metadata blobs of one partition, as fetched (``documents/part-NNNNN.parquet``: ImageSetID, blob)."""
    table = pq.read_table(os.path.join(path, "documents", f"{part['name']}.parquet"))
    return dict(zip(table.column("ImageSetID").to_pylist(), table.column("blob").to_pylist(), strict=True))


def _read_documents(path: str, part: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [parse_document(blob) for blob in _read_blobs(path, part).values()]


def _partition_snapshot(path: str, datastore_id: str, part: Mapping[str, Any]) -> Snapshot:
    snapshot = Snapshot.from_blobs(_read_blobs(path, part), datastore_id=datastore_id, version_ids=part["version_ids"])
    snapshot.primary = dict(part["primary"])
    return snapshot


def _as_scale(source: Any) -> ScaleSnapshot:
    if isinstance(source, ScaleSnapshot):
        return source
    if isinstance(source, SnapshotFrames):
        return source.snapshot
    if isinstance(source, str | os.PathLike):
        return ScaleSnapshot(source)
    raise TypeError(f"expected a scale snapshot path, ScaleSnapshot or open_snapshot() result, not {type(source)}")


# --- fetch -----------------------------------------------------------------------------------------------


def _listing(
    factory: Callable[[], Any], datastore_id: str, search: Mapping[str, Any] | None, sort: Any, retries: Any
) -> list[tuple[str, str, Any, Any]]:
    """(image set ID, version, isPrimary, StudyInstanceUID) of every image set the search lists, in order."""
    client = factory()
    seen: dict[str, tuple[str, str | None, Any, Any]] = {}
    try:
        for page in iter_search_pages(
            client, datastore_id, search, sort=sort, limiter=RateLimiter(*CONTROL_QUOTA), retries=retries
        ):
            for summary in page:
                image_set_id = summary["imageSetId"]
                study = (summary.get("DICOMTags") or {}).get("DICOMStudyInstanceUID")
                version = summary.get("version")
                seen.setdefault(
                    image_set_id,
                    (image_set_id, None if version is None else str(version), summary.get("isPrimary"), study),
                )
    finally:
        client.close()
    return list(seen.values())  # type: ignore[arg-type]  # a version is None only for a summary without one


def _cut(listing: list[tuple[str, str, Any, Any]], size: int) -> list[list[tuple[str, str, Any, Any]]]:
    """Partitions of about ``size`` image sets, each study whole, in order of each study's first image set."""
    studies: dict[Any, list[tuple[str, str, Any, Any]]] = {}
    for entry in listing:
        studies.setdefault(entry[3] if entry[3] else ("no study", entry[0]), []).append(entry)
    parts: list[list[tuple[str, str, Any, Any]]] = []
    current: list[tuple[str, str, Any, Any]] = []
    for group in studies.values():
        if current and len(current) + len(group) > size:
            parts.append(current)
            current = []
        current.extend(group)
    if current:
        parts.append(current)
    return parts


def _fetch_partition(
    factory: Callable[[], Any],
    datastore_id: str,
    path: str,
    name: str,
    entries: list[tuple[str, str, Any, Any]],
    rate: float | None,
    burst: float,
    max_workers: int,
    retries: Any,
) -> dict[str, Any]:
    """On a worker: fetch, flatten and write one partition; return its (small) manifest entry."""
    client = factory()
    try:
        versions = {e[0]: e[1] for e in entries if e[1] is not None}
        result = fetch_documents(
            client,
            datastore_id,
            [e[0] for e in entries],
            version_ids=versions,
            max_workers=max_workers,
            rate=rate,
            burst=burst,
            progress=False,
            retries=retries,
            parse=False,
        )
    finally:
        client.close()
    failures = [{k: (None if v is None else str(v)) for k, v in r.items()} for r in result.failures.to_dict("records")]
    entry = store_partition(path, name, result.blobs)
    failures += entry.pop("failures")
    ids = entry["image_set_ids"]
    primary = {**result.primary, **{e[0]: bool(e[2]) for e in entries if e[2] is not None}}
    return {
        **entry,
        "version_ids": {i: result.version_ids[i] for i in ids},
        "primary": {i: primary[i] for i in ids if i in primary},
        "failures": failures,
    }


def store_partition(path: str, name: str, blobs: Mapping[str, bytes]) -> dict[str, Any]:
    """Flatten one partition's fetched blobs and write them: the blobs as fetched (no re-dump, no re-gzip) and
    one Parquet file per level (native Arrow types; JSON text only for object cells)."""
    snapshot = Snapshot.from_blobs(blobs, datastore_id="")
    flat = snapshot.cached_flattened()
    failures = [
        {k: (None if v is None else str(v)) for k, v in r.items()} for r in snapshot.failures.to_dict("records")
    ]
    ids = snapshot.image_set_ids
    os.makedirs(os.path.join(path, "documents"), exist_ok=True)
    kept = pa.table(
        {"ImageSetID": pa.array(ids, pa.string()), "blob": pa.array([blobs[i] for i in ids], pa.large_binary())}
    )
    pq.write_table(kept, os.path.join(path, "documents", f"{name}.parquet"), compression="none")
    frames = {}
    for level in FRAME_NAMES:
        frame = getattr(flat, level)
        os.makedirs(os.path.join(path, level), exist_ok=True)
        info = write_frame(frame, os.path.join(path, level, f"{name}.parquet"))
        info["dtypes"] = {str(c): str(frame[c].dtype) for c in frame.columns if c not in info["json_columns"]}
        info["rows"] = len(frame)
        frames[level] = info
    return {"name": name, "image_set_ids": ids, "levels": dict(flat.levels), "frames": frames, "failures": failures}


def _total_threads(client: Any) -> int:
    return max(1, sum(client.nthreads().values()))


def fetch_to_parquet(
    source: str | Callable[[], Any],
    datastore_id: str,
    path: str | os.PathLike,
    *,
    client: Any = None,
    partition_size: int = 200,
    rate: float | None = GET_METADATA_QUOTA[0],
    burst: float = GET_METADATA_QUOTA[1],
    search: Mapping[str, Any] | None = None,
    sort: str | tuple[str, str] | None = None,
    max_workers: int = 4,
    retries: RetryPolicy | int | None = DEFAULT_RETRIES,
    progress: bool = True,
) -> ScaleSnapshot:
    """Fetch the image sets ``search`` lists (all by default) into a partitioned Parquet snapshot at ``path``.

    - ``source``: the endpoint URL of an AHI-compatible service (e.g. ``ahi-curation serve``; dummy keys), or a
      picklable callable returning a boto3 ``medical-imaging`` client (``ClientFactory(region_name=...)`` for
      AWS): every worker builds its own client from it.
    - ``client``: a ``dask.distributed.Client``; None starts a ``LocalCluster`` (threads) for the call.
    - ``partition_size``: image sets per partition (a study is never split, so a partition can be larger).
    - ``rate``/``burst``: the global GetImageSetMetadata limit, shared equally by the partitions that can run
      at once (the cluster's threads); each partition fetches with ``max_workers`` threads.

    Image sets that fail are listed in ``failures`` (as ``curation.run.fetching.fetch``). Returns the snapshot handle.
    """
    _dask()
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    if partition_size < 1:
        raise ValueError("partition_size must be at least 1")
    path = os.fspath(path)
    factory = _factory(source)
    listing = _listing(factory, datastore_id, search, sort, RetryPolicy.coerce(retries))
    parts = _cut(listing, partition_size)
    os.makedirs(path, exist_ok=True)
    own = client is None
    cluster = None
    if own:
        cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None)
        client = Client(cluster)
    try:
        concurrent = max(1, min(len(parts), _total_threads(client)))
        share = None if rate is None else rate / concurrent
        burst_share = max(1.0, burst / concurrent)
        futures = {}
        for number, entries in enumerate(parts):
            name = f"part-{number:05d}"
            future = client.submit(
                _fetch_partition,
                factory,
                datastore_id,
                path,
                name,
                entries,
                share,
                burst_share,
                max_workers,
                retries,
                key=f"ahi-fetch-{os.path.basename(path)}-{name}-{id(parts)}",
                pure=False,
            )
            futures[future] = number
        results: list[dict[str, Any] | None] = [None] * len(parts)
        with tqdm(total=len(listing), desc="fetch partitions", unit=" image sets", disable=not progress) as bar:
            for future in as_completed(list(futures)):
                number = futures.pop(future)
                results[number] = future.result()
                future.release()
                bar.update(len(parts[number]))
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    _write_manifest(path, datastore_id, [r for r in results if r is not None])
    return ScaleSnapshot(path)


def _write_manifest(path: str, datastore_id: str, partitions: list[dict[str, Any]]) -> None:
    levels: dict[str, str] = {}
    for part in partitions:
        for key, level in part["levels"].items():
            levels.setdefault(key, level)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "datastore_id": datastore_id,
        "levels": levels,
        "schema": _schema(partitions, levels),
        "failures": [f for part in partitions for f in part.pop("failures")],
        "partitions": partitions,
    }
    temporary = os.path.join(path, "manifest.json.tmp")
    with open(temporary, "w") as handle:
        json.dump(manifest, handle)
    os.replace(temporary, os.path.join(path, "manifest.json"))


# --- column schemas across partitions --------------------------------------------------------------------


def _renames(local: Mapping[str, str], levels: Mapping[str, str]) -> dict[str, str]:
    """studies column names of a partition -> the snapshot's, where the partition met a key at another level.

    A key is a plain column at the level where the whole snapshot first met it (as ``flatten_many`` of all
    documents would name it) and ``@Level:Key`` elsewhere.
    """
    out = {}
    for key, here in local.items():
        first = levels.get(key, here)
        if first != here:
            out[key] = f"@{here}:{key}"
            out[f"@{first}:{key}"] = key
    return out


def _schema(
    partitions: list[dict[str, Any]], levels: Mapping[str, str], names: Sequence[str] = FRAME_NAMES
) -> dict[str, Any]:
    """Per level: every column in first-seen order, which hold JSON cells, and the dtypes of the others."""
    schema = {}
    for level in names:
        plain: dict[str, None] = {}
        other: dict[str, None] = {}
        json_columns: set[str] = set()
        dtypes: dict[str, str] = {}
        for part in partitions:
            info = part["frames"][level]
            renames = _renames(part.get("levels", {}), levels) if level == "studies" else {}
            for column in info["columns"]:
                name = renames.get(column, column)
                (other if level == "studies" and name.startswith("@") else plain)[name] = None
                if column in info["json_columns"]:
                    json_columns.add(name)
                else:
                    dtypes.setdefault(name, info["dtypes"][column])
        columns = [*plain, *other]
        schema[level] = {
            "columns": columns,
            "json_columns": [c for c in columns if c in json_columns],
            "dtypes": {c: t for c, t in dtypes.items() if c not in json_columns},
        }
    return schema


def _conform(frame: pd.DataFrame, schema: Mapping[str, Any], renames: Mapping[str, str]) -> pd.DataFrame:
    """A partition's frame (Snapshot shape) with the snapshot-wide columns, in order, and their dtypes."""
    if renames:
        frame = frame.rename(columns=renames)
    json_columns = set(schema["json_columns"])
    data: dict[str, Any] = {}
    for column in schema["columns"]:
        if column in frame.columns:
            values = frame[column]
            if column in json_columns and values.dtype != object:
                array = np.empty(len(values), dtype=object)
                array[:] = [None if v is pd.NA or v is None else v for v in values.astype(object).tolist()]
                values = pd.Series(array, index=frame.index, dtype=object, copy=False)
            data[column] = values
        elif column in json_columns:
            data[column] = pd.Series(np.full(len(frame), None, dtype=object), index=frame.index, dtype=object)
        else:
            empty = pd.array([None] * len(frame), dtype=_dtype(schema["dtypes"][column]))
            data[column] = pd.Series(empty, index=frame.index)
    out = pd.DataFrame(data, index=frame.index, columns=schema["columns"])
    return out


def _read_part(path: str, level: str, number: int) -> pd.DataFrame:
    """One partition of one level, in the Snapshot's frame shape with the snapshot-wide columns."""
    manifest = _manifest(path)
    if manifest["format"] == EDITS_FORMAT:
        info = manifest["frames"][level][number]
        frame = read_frame(os.path.join(path, level, f"{info['name']}.parquet"), info)
        return _conform(frame, manifest["schema"][level], {})
    snapshot = _opened(path)
    part = snapshot.partitions[number]
    frame = read_frame(os.path.join(path, level, f"{part['name']}.parquet"), part["frames"][level])
    renames = _renames(part["levels"], snapshot.levels) if level == "studies" else {}
    return _conform(frame, snapshot.manifest["schema"][level], renames)


def _manifest(path: str) -> dict[str, Any]:
    return _cached_manifest(path, os.stat(os.path.join(path, "manifest.json")).st_mtime_ns)


@lru_cache(maxsize=8)
def _cached_manifest(path: str, mtime: int) -> dict[str, Any]:
    with open(os.path.join(path, "manifest.json")) as handle:
        manifest = json.load(handle)
    if manifest.get("format") not in (FORMAT, EDITS_FORMAT) or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is neither a scale snapshot nor saved frames (format version {FORMAT_VERSION})")
    return manifest


# --- Dask frames ---------------------------------------------------------------------------------------------


def _flat_name(column: str, level: str) -> str:
    return f"@{QUALIFIERS[level]}:{column}" if column in INDEXES[level][1:] else column


def to_flat(frame: pd.DataFrame, level: str) -> pd.DataFrame:
    """A Snapshot-shaped frame -> the Dask layout: index ImageSetID, other index levels as leading columns."""
    names = INDEXES[level]
    data: dict[str, Any] = {}
    for i, name in enumerate(names[1:], 1):
        data[name] = frame.index.get_level_values(i).to_numpy(dtype=np.int64 if name == "frame" else object)
    body = frame.rename(columns={c: _flat_name(c, level) for c in frame.columns if c in names[1:]})
    index = pd.Index(frame.index.get_level_values(0).to_numpy(dtype=object), dtype="str", name="ImageSetID")
    head = pd.DataFrame({k: (pd.array(v, dtype="str") if k != "frame" else v) for k, v in data.items()}, index=index)
    body = body.set_axis(index, axis=0)
    return pd.concat([head, body], axis=1) if len(head.columns) else body


def _kind(frame: pd.DataFrame) -> str:
    names = tuple(n for n in frame.index.names if n is not None)
    if len(names) > 1:
        for level, index in INDEXES.items():
            if names == index:
                return level
        raise ValueError(f"not a snapshot frame: index {names}")
    columns = set(frame.columns)
    for level in ("frames", "instances", "series"):
        if set(INDEXES[level][1:]) <= columns:
            return level
    return "studies"


def to_pandas(frame: pd.DataFrame, level: str | None = None) -> pd.DataFrame:
    """A frame in the Dask layout (a computed partition or result) -> the Snapshot's shape (MultiIndex).

    ``level`` ("studies", "series", "instances", "frames") is recognised from the columns when omitted.
    """
    level = level or _kind(frame)
    names = INDEXES[level]
    if tuple(frame.index.names) == names:
        return frame
    arrays = [frame.index.to_numpy(dtype=object).tolist()]
    arrays += [frame[name].tolist() for name in names[1:]]
    body = frame.drop(columns=list(names[1:]))
    body = body.rename(columns={_flat_name(n, level): n for n in names[1:] if _flat_name(n, level) in body.columns})
    return body.set_axis(build_index(arrays, names), axis=0)


class SnapshotFrames(dict):
    """``open_snapshot``'s result: level name -> Dask DataFrame, plus ``snapshot`` (the ScaleSnapshot)."""

    snapshot: ScaleSnapshot


def _read_flat(number: int, path: str, level: str) -> pd.DataFrame:
    return to_flat(_read_part(path, level, number), level)


def _dtype(name: str) -> Any:
    """A column's dtype from its recorded name (pandas cannot parse the frames' pyramids' nested Arrow type)."""
    return PYRAMID_DTYPE if name == str(PYRAMID_DTYPE) else name


def _meta(schema: Mapping[str, Any], level: str) -> pd.DataFrame:
    data = {}
    for column in schema["columns"]:
        dtype = object if column in schema["json_columns"] else _dtype(schema["dtypes"][column])
        data[column] = pd.Series(pd.array([], dtype=dtype))
    index = build_index([[] for _ in INDEXES[level]], INDEXES[level])
    frame = pd.DataFrame(data, columns=schema["columns"]).set_axis(index, axis=0)
    return to_flat(frame, level)


def open_snapshot(path: str | os.PathLike) -> SnapshotFrames:
    """Dask DataFrames of a scale snapshot: ``{"studies", "series", "instances", "frames"}``, lazily read.

    One Dask partition per snapshot partition (whole image sets each), index ``ImageSetID``; see the module
    docstring for the layout. Dask's conversion of object columns to strings is off for these frames: their
    cells are JSON values (lists, dicts, numbers, ``NULL``), as in a Snapshot. ``to_pandas(ddf.compute())``
    gives the Snapshot's frame shape back.
    """
    dask = _dask()
    import dask.dataframe as dd

    path = os.fspath(path)
    manifest = _manifest(path)
    out = SnapshotFrames()
    if manifest["format"] == EDITS_FORMAT:
        out.snapshot = ScaleSnapshot(manifest["snapshot"])
        counts = {level: len(infos) for level, infos in manifest["frames"].items()}
    else:
        out.snapshot = ScaleSnapshot(path)
        counts = {level: len(out.snapshot.partitions) for level in FRAME_NAMES}
    with dask.config.set({"dataframe.convert-string": False}):  # cells are JSON values, not text
        for level, count in counts.items():
            meta = _meta(manifest["schema"][level], level)
            if not count:
                out[level] = dd.from_pandas(meta, npartitions=1)
                continue
            out[level] = dd.from_map(
                _read_flat,
                list(range(count)),
                path=path,
                level=level,
                meta=meta,
                enforce_metadata=False,
                label=f"ahi-{level}",
            )
    return out


def _save_partition(frame: pd.DataFrame, number: int, path: str, level: str) -> dict[str, Any]:
    frame = to_pandas(frame, level)
    name = f"part-{number:05d}"
    os.makedirs(os.path.join(path, level), exist_ok=True)
    info = write_frame(frame, os.path.join(path, level, f"{name}.parquet"))
    info["dtypes"] = {str(c): str(frame[c].dtype) for c in frame.columns if c not in info["json_columns"]}
    return {**info, "name": name, "rows": len(frame)}


def save_frames(frames: Mapping[str, Any], path: str | os.PathLike, *, client: Any = None) -> str:
    """Write Dask frames in ``open_snapshot``'s layout (e.g. edited ones) to directory ``path``.

    ``frames`` maps level names to Dask DataFrames partitioned as the snapshot's (or is ``open_snapshot``'s
    result after edits). Each partition becomes one Parquet file, cells encoded as in the snapshot, so nothing
    is lost; ``open_snapshot(path)`` reads them back and ``diff(snapshot, path)`` takes the path. Returns it.
    """
    dask = _dask()
    path = os.fspath(path)
    snapshot = frames.snapshot if isinstance(frames, SnapshotFrames) else None
    levels = [level for level in FRAME_NAMES if level in frames]
    if snapshot is None:
        raise TypeError("save_frames takes open_snapshot()'s result (after edits): it names the snapshot")
    task = dask.delayed(_save_partition, pure=False)
    tasks = {
        level: [task(piece, n, path, level) for n, piece in enumerate(frames[level].to_delayed())] for level in levels
    }
    results = _compute([t for level in levels for t in tasks[level]], client)
    infos: dict[str, list[dict[str, Any]]] = {}
    for level in levels:
        infos[level], results = results[: len(tasks[level])], results[len(tasks[level]) :]
    manifest = {
        "format": EDITS_FORMAT,
        "format_version": FORMAT_VERSION,
        "snapshot": os.path.abspath(snapshot.path),
        "frames": infos,
        "schema": {
            level: _schema([{"frames": {level: info}} for info in infos[level]], {}, [level])[level] for level in levels
        },
    }
    temporary = os.path.join(path, "manifest.json.tmp")
    with open(temporary, "w") as handle:
        json.dump(manifest, handle)
    os.replace(temporary, os.path.join(path, "manifest.json"))
    return path


# --- diff and plan, partition by partition ---------------------------------------------------------------------


def _compute(tasks: list[Any], client: Any) -> list[Any]:
    dask = _dask()
    if client is not None:
        return client.gather(client.compute(tasks))
    return list(dask.compute(*tasks))


def _edited_items(edited: Any) -> list[tuple[str | None, Any]]:
    import dask.dataframe as dd

    if isinstance(edited, pd.DataFrame | dd.DataFrame):
        return [(None, edited)]
    if isinstance(edited, Mapping):
        return [(k if k in INDEXES else None, f) for k, v in edited.items() for _, f in _edited_items(v)]
    if isinstance(edited, Sequence) and not isinstance(edited, str):
        return [item for frame in edited for item in _edited_items(frame)]
    raise TypeError(f"diff takes edited Dask or pandas DataFrames (or a dict/list of them), not {type(edited)}")


def _split(frame: pd.DataFrame, snapshot: ScaleSnapshot) -> list[pd.DataFrame]:
    """A pandas frame cut into the snapshot's partitions by ImageSetID (unknown image sets go to the first)."""
    ids = frame.index.get_level_values(0) if frame.index.nlevels > 1 else frame.index
    where = np.fromiter((snapshot.partition_of(i) or 0 for i in ids), dtype=np.int64, count=len(frame))
    return [frame.iloc[np.flatnonzero(where == n)] for n in range(len(snapshot.partitions))]


def _diff_partition(
    path: str,
    number: int,
    pieces: list[tuple[str | None, pd.DataFrame]],
    vrs: Mapping[str, str] | None,
    rows: str = "selection",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """On a worker: ``curation.curate.differ.diff`` of one partition's edited frames against its documents."""
    from curation.curate.differ import diff as diff_frames

    snapshot = _opened(path)
    part = snapshot.partitions[number]
    local = _partition_snapshot(path, snapshot.datastore_id, part)
    allowed = set(part["image_set_ids"])
    back = _renames(part["levels"], snapshot.levels)
    to_local = {v: k for k, v in back.items()}
    frames = []
    for hint, piece in pieces:
        level = hint or _kind(piece)
        frame = to_pandas(piece, level)
        foreign = [i for i in set(frame.index.get_level_values(0)) - allowed if snapshot.partition_of(i) is not None]
        if foreign:
            raise ValueError(
                f"edited {level} partition {number} holds image sets of other partitions: keep the "
                "partitioning of open_snapshot (filter, assign, map_partitions; no repartition)"
            )
        if level == "studies" and to_local:
            frame = frame.rename(columns=to_local)
        frames.append((level, frame))
    changes = diff_frames(local, [{level: frame} for level, frame in frames], vrs=vrs, rows=rows)
    table, problems = changes.changes, changes.problems
    if back:
        table, problems = _rename_cells(table, back), _rename_cells(problems, back)
    return table, problems


def _rename_cells(table: pd.DataFrame, names: Mapping[str, str]) -> pd.DataFrame:
    """``table`` with its ``column`` cells renamed by ``names`` (other cells, None included, kept)."""
    values = np.empty(len(table), dtype=object)
    values[:] = [names.get(c, c) if isinstance(c, str) else c for c in table["column"].tolist()]
    return table.assign(column=pd.Series(values, index=table.index, dtype=object))


def diff(
    snapshot: Any,
    edited: Any,
    *,
    vrs: Mapping[str, str] | None = None,
    strict: bool = False,
    rows: str = "selection",
    client: Any = None,
) -> ChangeSet:
    """``curation.curate.differ.diff`` on a scale snapshot, partition by partition (see the module docstring).

    ``rows`` as in ``curation.diff``: ``"selection"`` leaves rows absent from a frame alone, ``"all"`` removes
    the instances and series absent from it (each partition's frame stands for the whole partition).

    - ``snapshot``: the scale snapshot's path, its ``ScaleSnapshot`` or ``open_snapshot``'s result.
    - ``edited``: Dask DataFrames from ``open_snapshot`` after edits (a dict names their levels; otherwise
      they are recognised by their columns), the path ``save_frames`` wrote them to, or pandas frames
      (Snapshot shape or Dask layout; e.g. from ``sql``): a pandas frame counts as the whole frame of its
      level, exactly as in ``curation.curate.differ``.
    - ``client``: a ``dask.distributed.Client`` (default: Dask's current scheduler).

    The ChangeSet's ``snapshot`` is the ``ScaleSnapshot``: give the ChangeSet to ``curation.scale.plan``.
    """
    _dask()
    import dask
    import dask.dataframe as dd

    from curation.curate.differ import DiffError, check_vrs

    scale = _as_scale(snapshot)
    checked = check_vrs(vrs)
    if isinstance(edited, str | os.PathLike):
        edited = open_snapshot(edited)
    count = len(scale.partitions)
    per_part: list[list[tuple[str | None, Any]]] = [[] for _ in range(count)]
    for hint, frame in _edited_items(edited):
        if isinstance(frame, dd.DataFrame):
            if frame.npartitions != count:
                raise ValueError(
                    f"the edited frame has {frame.npartitions} partitions, the snapshot {count}: keep "
                    "the partitioning of open_snapshot (filter, assign, map_partitions; no repartition)"
                )
            for number, piece in enumerate(frame.to_delayed()):
                per_part[number].append((hint, piece))
        else:
            level = hint or _kind(frame)
            for number, piece in enumerate(_split(to_pandas(frame, level), scale)):
                per_part[number].append((level, piece))
    task = dask.delayed(_diff_partition, pure=False)
    results = _compute([task(scale.path, n, per_part[n], checked, rows) for n in range(count)], client)
    tables = [t for t, _ in results if len(t)]
    problems = [p for _, p in results if len(p)]
    table = pd.concat(tables, ignore_index=True) if tables else empty_changes()
    found = pd.concat(problems, ignore_index=True) if problems else empty_problems()
    changes = ChangeSet(changes=table.astype(object), problems=found.astype(object), snapshot=scale, vrs=checked)
    if strict and not changes.problems.empty:
        raise DiffError(changes.problems)
    return changes


def _plan_partition(
    path: str,
    number: int,
    changes: pd.DataFrame,
    problems: pd.DataFrame,
    vrs: Mapping[str, str],
    options: Mapping[str, Any],
) -> UpdatePlan:
    """On a worker: ``curation.curate.planner.plan`` of one partition's changes against its documents."""
    from curation.curate.planner import plan as plan_changes

    snapshot = _opened(path)
    local = _partition_snapshot(path, snapshot.datastore_id, snapshot.partitions[number])
    return plan_changes(ChangeSet(changes, problems, local, dict(vrs)), allow_problems=True, **options)


def plan(
    changes: ChangeSet,
    *,
    max_blob_bytes: int = 30_000,
    include_study_image_sets: bool = False,
    allow_problems: bool = False,
    client: Any = None,
) -> UpdatePlan:
    """``curation.curate.planner.plan`` of a ChangeSet from ``curation.scale.diff``, partition by partition.

    Same arguments and result as the in-memory ``plan`` (a study is never split across partitions, so
    ``include_study_image_sets`` folds as it does in memory). Apply the plan with ``curation.run.applying.apply``:
    one rate-limited, journaled stream.
    """
    dask = _dask()
    from curation.curate.updateplan import PlanError, UpdatePlan

    scale = _as_scale(changes.snapshot)
    count = len(scale.partitions)

    def cut(table: pd.DataFrame) -> list[pd.DataFrame]:
        where = np.fromiter(
            (scale.partition_of(i) or 0 if isinstance(i, str) else 0 for i in table["ImageSetID"]),
            dtype=np.int64,
            count=len(table),
        )
        return [table.iloc[np.flatnonzero(where == n)].reset_index(drop=True) for n in range(count)]

    change_parts, problem_parts = cut(changes.changes), cut(changes.problems)
    options = {"max_blob_bytes": max_blob_bytes, "include_study_image_sets": include_study_image_sets}
    task = dask.delayed(_plan_partition, pure=False)
    numbers = [n for n in range(count) if len(change_parts[n]) or len(problem_parts[n])]
    plans = _compute(
        [task(scale.path, n, change_parts[n], problem_parts[n], dict(changes.vrs), options) for n in numbers], client
    )
    folding = {r.image_set_id for p in plans for r in p.requests if r.affects}
    requests = [r for p in plans for r in p.requests if r.image_set_id in folding]
    requests += [r for p in plans for r in p.requests if r.image_set_id not in folding]
    versions = {k: v for p in plans for k, v in p.base_versions.items()}
    base_versions: dict[str, str] = {}
    for request in requests:
        for image_set in (request.image_set_id, *request.affects):
            if image_set in versions:
                base_versions.setdefault(image_set, versions[image_set])
    found = [p.problems for p in plans if len(p.problems)]
    problems = pd.concat(found, ignore_index=True) if found else empty_problems()
    if len(problems) and not allow_problems:
        raise PlanError(problems)
    return UpdatePlan.build(scale.datastore_id, base_versions, requests, problems)


# --- SQL -------------------------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _part_sql(snapshot: ScaleSnapshot, part: Mapping[str, Any], level: str, json_columns: set[str]) -> str:
    """One partition's file, its studies columns renamed to the snapshot's names, and a column that is JSON in
    another partition (an object column there, e.g. mixed spellings) given as JSON text here too."""
    file = os.path.join(snapshot.path, level, f"{part['name']}.parquet").replace("'", "''")
    info = part["frames"][level]
    renames = _renames(part["levels"], snapshot.levels) if level == "studies" else {}
    own = {renames.get(c, c): c for c in info["columns"]}
    items = [f"{_quote(k)} AS {_quote(v)}" for k, v in renames.items() if k in info["columns"]]
    text = [
        f"to_json({_quote(c)})::VARCHAR AS {_quote(c)}"
        for name, c in own.items()
        if name in json_columns and c not in info["json_columns"]
    ]
    select = "SELECT *"
    if text:
        select += f" REPLACE ({', '.join(text)})"
    if items:
        select += f" RENAME ({', '.join(items)})"
    return f"{select} FROM read_parquet('{file}')"


def _view_sql(snapshot: ScaleSnapshot, level: str) -> str:
    schema = snapshot.manifest["schema"][level]
    names = INDEXES[level]
    json_columns = set(schema["json_columns"])
    sources = [_part_sql(snapshot, part, level, json_columns) for part in snapshot.partitions]
    select = [f"{_quote('@index:' + n)} AS {_quote(n)}" for n in names]
    for column in schema["columns"]:
        alias = _quote(_flat_name(column, level))
        if column in json_columns:
            select.append(f"CAST({_quote(column)} AS JSON) AS {alias}")
        else:
            select.append(f"{_quote(column)} AS {alias}")
    body = " UNION ALL BY NAME ".join(f"({s})" for s in sources)
    return f"SELECT {', '.join(select)} FROM ({body})"


def sql(path: str | os.PathLike, query: str) -> pd.DataFrame:
    """Run a DuckDB ``query`` over a scale snapshot's Parquet files; return a pandas DataFrame.

    Views ``studies``, ``series``, ``instances``, ``frames``: index levels as columns (``ImageSetID``,
    ``SeriesInstanceUID``, ``SOPInstanceUID``, ``frame``; a DICOM attribute of the same name is
    ``@Series:SeriesInstanceUID`` / ``@Instance:SOPInstanceUID``), text, integer and float columns as VARCHAR,
    BIGINT and DOUBLE (``Modality = 'CT'``, ``ImageType LIKE 'ORIGINAL\\%'``; ``''`` is present-empty, NULL
    absent), object cells as DuckDB ``JSON`` (``SourceImageSequence->>'$[0].CodeValue'``). In the result, JSON
    columns are
    decoded as ``Snapshot`` cells (JSON null -> ``NULL``, SQL NULL -> absent), and when the result holds
    ``ImageSetID`` (and the other index levels of its level) they become the index, so that ``SELECT *``
    from a view gives the Snapshot's frame shape (for ``curation.curate.differ``: remember that instance rows left out
    of an edited ``instances`` frame mean "remove").
    """
    duckdb = _duckdb()
    snapshot = ScaleSnapshot(path)
    connection = duckdb.connect()
    try:
        for level in FRAME_NAMES:
            if snapshot.partitions:
                connection.execute(f"CREATE VIEW {level} AS {_view_sql(snapshot, level)}")
        relation = connection.sql(query)
        if relation is None:
            return pd.DataFrame()
        names, types = relation.columns, [str(t) for t in relation.types]
        table = relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.fetch_arrow_table()
    finally:
        connection.close()
    return _result_frame(table, names, types)


def _result_frame(table: Any, names: list[str], types: list[str]) -> pd.DataFrame:
    import pyarrow as pa

    data: dict[str, Any] = {}
    for i, name in enumerate(names):
        column = table.column(i)
        if types[i] == "JSON":
            array = np.empty(len(column), dtype=object)
            array[:] = [decode_cell(v) for v in column.to_pylist()]
            data[name] = pd.Series(array, dtype=object, copy=False)
        elif pa.types.is_integer(column.type):
            data[name] = pd.Series(column.to_pandas(types_mapper={column.type: pd.Int64Dtype()}.get))
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            data[name] = pd.Series(pd.array(column.to_pylist(), dtype="str"))
        else:
            data[name] = column.to_pandas()
    frame = pd.DataFrame(data, columns=names) if data else pd.DataFrame(index=range(table.num_rows))
    if "ImageSetID" not in frame.columns or len(set(names)) != len(names):
        return frame
    for level in ("frames", "instances", "series", "studies"):
        index = INDEXES[level]
        if all(n in frame.columns for n in index):
            arrays = [frame[n].astype(object).tolist() for n in index]
            if "frame" in index:
                arrays[-1] = [int(v) for v in arrays[-1]]
            body = frame.drop(columns=list(index))
            body = body.rename(columns={_flat_name(n, level): n for n in index[1:]})
            return body.set_axis(build_index(arrays, index), axis=0)
    return frame
