"""AHI metadata documents <-> level DataFrames, losslessly (``unflatten(flatten(doc)) == [doc]``).

Frames (``Flattened``):

- ``studies``: one row per image set, index ``ImageSetID``; the Patient and Study ``DICOM`` attributes.
- ``series``: index (``ImageSetID``, ``SeriesInstanceUID``); the series ``DICOM`` attributes.
- ``instances``: index (``ImageSetID``, ``SeriesInstanceUID``, ``SOPInstanceUID``); the instance ``DICOM``
  attributes and the instance node's other keys (see below).
- ``frames``: one row per image frame, index = the instance's + ``frame`` (1-based, the DICOM frame number);
  columns ``ID``, ``FrameSizeInBytes``, ``MinPixelValue``, ``MaxPixelValue``, the full-resolution ``Width``,
  ``Height``, ``Checksum`` (last pyramid level, for convenience) and the whole
  ``PixelDataChecksumFromBaseToFullResolution`` list (the lossless source).

Cells hold the values exactly as AHI encodes them: strings with their padding, arrays as lists, sequences as
lists of dicts, numbers as ``int``/``float``. A present attribute whose value is JSON ``null`` holds the
sentinel ``NULL``; an absent attribute is missing (``None``, which ``isna`` reports). Attribute columns are
``object`` dtype so that any edit works (``= "CHEST"``, ``= NULL``, ``= None`` to remove); in ``frames`` a
column of integers is ``Int64`` and a column of strings ``str`` (AHI-generated, not editable).

Column names (never collide with a DICOM key, which never starts with ``@``):

- ``Keyword`` / ``7FDF1001``: a DICOM attribute at the frame's level. In ``studies`` the level of a plain
  column is where the batch first puts it (Patient before Study); ``Flattened.levels`` records it.
- ``@Key``: a non-DICOM key of the frame's node (instances: ``@StoredTransferSyntaxUID``, ``@ChecksumType``,
  ``@DICOMVRs``, any unknown key; series: unknown series-node keys; studies: the document's top-level keys
  such as ``@SchemaVersion``, ``@DatastoreID``). ``@ImageFrames`` in ``instances`` is the number of frames
  (their rows are in ``frames``), missing when the instance node has no ``ImageFrames``. In ``frames``, an
  unknown frame key ``K`` is ``@K``.
- ``@Level:Name``: column ``Name`` placed at ``Level`` where its plain column is at another level: an
  attribute both at Patient and at Study level (``@Study:PatientName``), Patient/Study node keys
  (``@Patient:@Key``), and lower-level duplicates in the wide view (``@Instance:Modality``).

Documents whose DICOM keys start with ``@`` or whose node keys contain ``:`` cannot be represented and are
refused (AHI never writes such keys).

Round trip: ``unflatten(flatten(doc)) == [doc]`` (``unflatten`` always returns a list, one document per
``studies`` row); equal as JSON (an int stays an int, a float a float), key order within an object may
differ. ``flatten`` never modifies its input; by default (``copy=True``) no list/dict cell is shared with it.
Bad input raises ``FlattenError`` (a ``DocumentError`` naming the image set); ``flatten_many`` lists it in
``failures`` instead and returns the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat, zip_longest
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from curation.frames.cells import (
    INDEX,
    INT64,
    MISSING,
    OBJECT,
    REMOVE,
    STR,
    codec_for,
    column_array,
    concat_arrays,
    decode,
    frame_array,
    full_resolution,
    infer_codec,
    is_empty,
    is_remove,
)
from curation.frames.cells import PYRAMID as PYRAMID_CODEC
from curation.frames.gcpause import gc_paused
from curation.model import dictionary as dicom
from curation.model.dictionary import VALID_VRS
from curation.model.document import LEVELS, DocumentError
from curation.model.missing import NULL, is_absent

__all__ = [
    "NULL",
    "REMOVE",
    "FlattenError",
    "Flattened",
    "flatten",
    "flatten_many",
    "is_null",
    "unflatten",
    "wide_view",
]


STUDY_INDEX = ("ImageSetID",)
SERIES_INDEX = ("ImageSetID", "SeriesInstanceUID")
INSTANCE_INDEX = ("ImageSetID", "SeriesInstanceUID", "SOPInstanceUID")
FRAME_INDEX = ("ImageSetID", "SeriesInstanceUID", "SOPInstanceUID", "frame")
PYRAMID = "PixelDataChecksumFromBaseToFullResolution"
FRAME_KEYS = ("ID", PYRAMID, "MinPixelValue", "MaxPixelValue", "FrameSizeInBytes")
FRAME_COLUMNS = ("ID", "FrameSizeInBytes", "MinPixelValue", "MaxPixelValue", "Width", "Height", "Checksum", PYRAMID)
DERIVED_FRAME_COLUMNS = ("Width", "Height", "Checksum")
QUALIFIER_LEVELS = LEVELS
_ROOT_STRUCTURE = ("ImageSetID", "Patient", "Study")
#: Codec of ``instances["@ImageFrames"]`` (the number of frames; the frames are in ``frames``).
COUNT = "count"


class FlattenError(DocumentError):
    """A document that cannot be flattened; ``image_set_id`` names it (None when it has no ID)."""

    def __init__(self, image_set_id: str | None, message: str) -> None:
        super().__init__(f"image set {image_set_id}: {message}")
        self.image_set_id = image_set_id
        self.reason = message


@dataclass
class Flattened:
    """The level frames of a batch of documents, plus what ``unflatten`` needs to rebuild them."""

    studies: pd.DataFrame
    series: pd.DataFrame
    instances: pd.DataFrame
    frames: pd.DataFrame
    #: level ("Patient" or "Study") of each plain attribute column of ``studies``
    levels: dict[str, str] = field(default_factory=dict)
    #: documents that could not be flattened: ImageSetID, stage ("flatten"), error
    failures: pd.DataFrame = field(default_factory=lambda: failures_frame([]))
    #: per frame name, the codec of each column (``curation.frames.cells``; ``index`` for a UID held by the index)
    codecs: dict[str, dict[str, str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Flattened(studies={len(self.studies)}, series={len(self.series)}, "
            f"instances={len(self.instances)}, frames={len(self.frames)}, failures={len(self.failures)})"
        )


def failures_frame(rows: Iterable[tuple[str | None, str, str]]) -> pd.DataFrame:
    """A failures table (ImageSetID, stage, error) from tuples."""
    rows = list(rows)
    if not rows and _NO_FAILURES is not None:
        return _NO_FAILURES.copy()
    return pd.DataFrame(
        {
            "ImageSetID": pd.Series([r[0] for r in rows], dtype=object),
            "stage": pd.Series([r[1] for r in rows], dtype=object),
            "error": pd.Series([r[2] for r in rows], dtype=object),
        }
    )


_NO_FAILURES: pd.DataFrame | None = None
_NO_FAILURES = failures_frame([])


def is_null(values: pd.Series | pd.DataFrame) -> pd.Series | pd.DataFrame:
    """Boolean mask of present-empty cells (``""`` in ``str`` columns, ``NULL`` in object ones); ``isna`` finds
    absent ones."""
    return values.map(is_empty, na_action="ignore").fillna(False).astype(bool)


# --- values ------------------------------------------------------------------------------------------------


def copy_value(value: Any) -> Any:
    """A copy of a JSON value that shares no list or dict with the original."""
    t = type(value)
    if t is list:
        types = set(map(type, value))
        if list in types or dict in types:
            return [copy_value(x) for x in value]
        return value.copy()
    if t is dict:
        types = set(map(type, value.values()))
        if list in types or dict in types:
            return {k: copy_value(x) for k, x in value.items()}
        return value.copy()
    return value


# --- checks ------------------------------------------------------------------------------------------------


def _node(parent: dict, key: str, what: str, image_set_id: str) -> dict:
    node = parent.get(key)
    if not isinstance(node, dict):
        raise FlattenError(image_set_id, f"{what} is missing or not an object")
    if not isinstance(node.get("DICOM"), dict):
        raise FlattenError(image_set_id, f"{what} has no DICOM object")
    return node


def _check_node_keys(node: dict, skip: tuple[str, ...], what: str, image_set_id: str) -> None:
    for key in node:
        if key not in skip and ":" in key:
            raise FlattenError(image_set_id, f"{what} has key {key!r} containing ':' (cannot be a column)")


def check(document: Any, *, scan_keys: bool = True) -> str:
    """Check that ``document`` can be flattened; return its ImageSetID or raise ``FlattenError``.

    Checks the levels, the DICOMVRs (every VR must be one pydicom knows), ImageFrames, duplicate
    SOPInstanceUIDs across series, node keys; with ``scan_keys`` also that no DICOM key starts with ``@``.
    """
    image_set_id = _collect(document, set(), [[], []], [], [[], [], []], [], [[], [], [], []], [])
    if scan_keys:
        dicoms = [document["Patient"]["DICOM"], document["Study"]["DICOM"]]
        for series in document["Study"]["Series"].values():
            dicoms.append(series["DICOM"])
            dicoms.extend(instance["DICOM"] for instance in series["Instances"].values())
        for dicom in dicoms:
            for key in dicom:
                if key[:1] == "@":
                    raise FlattenError(image_set_id, f"DICOM key {key!r} starts with '@' (reserved)")
    return image_set_id


# --- flatten -----------------------------------------------------------------------------------------------


def _put(columns: dict[str, list], row: int, items: Iterable[tuple[str, Any]]) -> None:
    """Append one row's ``(column, value)`` pairs to per-column lists of JSON values (absent cells: MISSING)."""
    for key, value in items:
        col = columns.get(key)
        if col is None:
            col = columns[key] = [MISSING] * row
        elif len(col) != row:
            col.extend([MISSING] * (row - len(col)))
        col.append(value)


def build_index(arrays: list[list], names: tuple[str, ...]) -> pd.Index:
    """The level index (``str`` levels; ``frame`` int), built from codes (faster than from_arrays)."""
    if len(names) == 1:
        return pd.Index(arrays[0], name=names[0], dtype="str")
    levels: list[Any] = []
    codes: list[Any] = []
    for values, name in zip(arrays, names, strict=True):
        array = np.empty(len(values), dtype=np.int64 if name == "frame" else object)
        array[:] = values
        level_codes, uniques = pd.factorize(array)
        codes.append(level_codes)
        levels.append(pd.Index(uniques, dtype="int64" if name == "frame" else "str"))
    return pd.MultiIndex(levels=levels, codes=codes, names=list(names), verify_integrity=False)


def _child_index(parent: pd.Index, counts: list, arrays: list[list], names: tuple[str, ...]) -> pd.Index:
    """The index of the next level down: ``build_index(arrays, names)``, made faster when every parent row has
    children (``counts``, in parent order): then the parent's levels are exactly the child's, its codes repeated."""
    if not len(parent) or None in counts or 0 in counts:
        return build_index(arrays, names)
    repeats = np.asarray(counts, dtype=np.int64)
    levels: list[Any]
    codes: list[Any]
    if isinstance(parent, pd.MultiIndex):
        levels, codes = list(parent.levels), [np.repeat(c, repeats) for c in parent.codes]
    else:  # the studies index: unique ImageSetIDs
        levels, codes = [parent], [np.repeat(np.arange(len(parent)), repeats)]
    last = np.empty(len(arrays[-1]), dtype=np.int64 if names[-1] == "frame" else object)
    last[:] = arrays[-1]
    last_codes, uniques = pd.factorize(last)
    levels.append(pd.Index(uniques, dtype="int64" if names[-1] == "frame" else "str"))
    codes.append(last_codes)
    return pd.MultiIndex(levels=levels, codes=codes, names=list(names), verify_integrity=False)


def _frame(columns: dict[str, Any], index: pd.Index) -> pd.DataFrame:
    """A frame from column arrays made once: object ndarrays stay object (no ``str`` inference)."""
    data = {
        name: pd.Series(values, dtype=object, copy=False) if isinstance(values, np.ndarray) else values
        for name, values in columns.items()
    }
    frame = pd.DataFrame(data, columns=list(data)) if data else pd.DataFrame(index=range(len(index)))
    frame.index = index
    return frame


def flatten(document: dict[str, Any], *, copy: bool = True) -> Flattened:
    """Flatten one document into level frames; raises ``FlattenError`` (a DocumentError) on bad input.

    The input is never modified and no cell shares a list or dict with it (cells are immutable copies;
    ``copy`` is kept for compatibility and changes nothing).
    """
    return _flatten([document], strict=True)


def flatten_many(
    documents: Iterable[dict[str, Any]], *, copy: bool = True, levels: dict[str, str] | None = None
) -> Flattened:
    """Flatten many documents at once (columns built in plain lists, each frame made once).

    A document that cannot be flattened (missing level, unknown VR, duplicate UIDs, an ImageSetID already
    seen in the batch) is left out and listed in ``failures``; the rest are returned. ``levels`` is the
    Patient/Study placement of the keys earlier batches met (updated).
    """
    return _flatten(documents, strict=False, levels={} if levels is None else levels)


def _flatten(documents: Iterable[dict[str, Any]], *, strict: bool, levels: dict[str, str] | None = None) -> Flattened:
    failures: list[tuple[str | None, str, str]] = []
    with gc_paused():
        flat = assemble([batch_part(list(documents), failures, {} if levels is None else levels, strict=strict)])
    assert flat is not None  # one part always assembles
    flat.failures = failures_frame(failures)
    return flat


def batch_part(
    documents: list[dict[str, Any]], failures: list, levels: dict[str, str], *, strict: bool = False
) -> Part:
    """The columns of a batch of documents (``assemble`` makes frames of one or many batches). A document that
    cannot be flattened is listed in ``failures`` (``strict``: raised); ``levels`` is updated."""
    placed = dict(levels)
    part, reserved = _part(documents, strict, failures, levels)
    if reserved:
        # rare: some DICOM key starts with "@"; find those documents and flatten the others
        keep = []
        for document in documents:
            image_set_id = document.get("ImageSetID") if isinstance(document, dict) else None
            if image_set_id not in reserved:
                keep.append(document)
                continue
            try:
                check(document)
            except FlattenError as exc:
                if strict:
                    raise
                failures.append((exc.image_set_id, "flatten", str(exc)))
        levels.clear()
        levels.update(placed)
        part, _ = _part(keep, strict, [], levels)
    return part


_MISSING = MISSING


def _transpose(dicts: list[dict]) -> dict[str, tuple]:
    """Columns of a list of row dicts: key -> tuple of values (``_MISSING`` where a row lacks the key).

    Keys in first-seen order. Rows sharing one key sequence (instances of a series, usually) are transposed
    in C (``zip``); otherwise each row is first laid out on the union of the keys (padded, or rearranged by an
    ``itemgetter``, also in C).
    """
    if not dicts:
        return {}
    signatures = list(map(tuple, dicts))
    distinct = dict.fromkeys(signatures)
    if len(distinct) == 1:
        (keys,) = distinct
        rows = list(map(tuple, map(dict.values, dicts)))  # row-major first: much kinder to the CPU cache
        return dict(zip(keys, zip(*rows, strict=True), strict=True))
    keys = tuple(dict.fromkeys(chain.from_iterable(distinct)))
    # a row whose keys are a prefix of the union is padded by zip_longest; any other is first rearranged by a
    # getter (its values, then MISSING, picked in the union's order)
    getters = {sig: _rearrange(sig, keys) for sig in distinct if keys[: len(sig)] != sig}
    rows = list(map(tuple, map(dict.values, dicts)))
    if getters:
        for number, sig in enumerate(signatures):
            getter = getters.get(sig)
            if getter is not None:
                rows[number] = getter((*rows[number], _MISSING))
    return dict(zip(keys, zip_longest(*rows, fillvalue=_MISSING), strict=True))


def _rearrange(signature: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    """A getter of a row's values (followed by MISSING) in the order of ``keys``: MISSING for a key it lacks."""
    positions = {key: i for i, key in enumerate(signature)}
    return itemgetter(*[positions.get(key, len(signature)) for key in keys])


def _uid_column(columns: dict[str, Any], key: str, keys: list[str], codecs: dict[str, str]) -> None:
    """Drop the UID column that repeats the index level (every row's DICOM UID equals its key): codec INDEX."""
    values = columns.get(key)
    if values is not None and list(values) == keys:
        del columns[key]
        codecs[key] = INDEX


def _level_columns(
    columns: dict[str, Sequence], vr_of: Any = None, codecs: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A level's column arrays from per-column JSON values (MISSING = absent), each under its codec (``cells``).

    ``vr_of(name, values)`` gives a column's VR when the dictionary does not (private tags, from DICOMVRs).
    """
    codecs = dict(codecs or {})
    data: dict[str, Any] = {}
    for name, values in columns.items():
        _, key, node_key = split_column(name)
        vr = (
            None
            if node_key
            else (vr_of(name, values) if vr_of is not None and dicom.is_tag_key(key) else dicom.vr_of(key))
        )
        data[name], codecs[name] = column_array(values, codec_for(key, vr, node_key))
    return data, codecs


_INSTANCE_KEYS = frozenset({"DICOM", "DICOMVRs", "StoredTransferSyntaxUID", "ChecksumType", "ImageFrames"})
_SERIES_KEYS = frozenset({"DICOM", "Instances"})
_FRAME_KEY_SET = frozenset(FRAME_KEYS)


def _slow_key_check(node: dict, allowed: frozenset, what: str, image_set_id: str) -> None:
    _check_node_keys(node, tuple(allowed), what, image_set_id)


def _collect(
    document: Any,
    seen_ids: set[str],
    r_ids: list[list[str]],
    r_nodes: list[dict],
    i_ids: list[list[str]],
    i_nodes: list[dict],
    f_ids: list[list],
    f_nodes: list[dict],
) -> str:
    """Append one document's series, instance and frame nodes, checking them; raise FlattenError if bad."""
    if type(document) is not dict:
        raise FlattenError(None, f"document must be a JSON object, not {type(document).__name__}")
    image_set_id = document.get("ImageSetID")
    if type(image_set_id) is not str or not image_set_id:
        raise FlattenError(None, "document has no ImageSetID")
    if image_set_id in seen_ids:
        raise FlattenError(image_set_id, "duplicate ImageSetID in the batch")
    _check_node_keys(document, _ROOT_STRUCTURE, "document", image_set_id)
    patient = _node(document, "Patient", "Patient level", image_set_id)
    study = _node(document, "Study", "Study level", image_set_id)
    _check_node_keys(patient, ("DICOM",), "Patient", image_set_id)
    _check_node_keys(study, ("DICOM", "Series"), "Study", image_set_id)
    all_series = study.get("Series")
    if type(all_series) is not dict:
        raise FlattenError(image_set_id, "Study.Series is missing or not an object")
    seen: dict[str, str] = {}
    for series_uid, series in all_series.items():
        if type(series) is not dict or type(series.get("DICOM")) is not dict:
            raise FlattenError(image_set_id, f"series {series_uid} is not an object with a DICOM object")
        instances = series.get("Instances")
        if type(instances) is not dict:
            raise FlattenError(image_set_id, f"series {series_uid} has no Instances object")
        if not _SERIES_KEYS.issuperset(series):
            _slow_key_check(series, _SERIES_KEYS, f"series {series_uid}", image_set_id)
        r_ids[0].append(image_set_id)
        r_ids[1].append(series_uid)
        r_nodes.append(series)
        _collect_series(image_set_id, series_uid, instances, seen, i_ids, i_nodes, f_ids, f_nodes)
    return image_set_id


def _collect_series(
    image_set_id: str,
    series_uid: str,
    instances: dict,
    seen: dict[str, str],
    i_ids: list[list[str]],
    i_nodes: list[dict],
    f_ids: list[list],
    f_nodes: list[dict],
) -> None:
    """Append one series' instance and frame nodes. The quick checks run over the whole series at once (in C);
    when one fails, ``_collect_series_checked`` goes node by node so that the error names what is wrong."""
    uids = list(instances)
    nodes = list(instances.values())
    if seen.keys().isdisjoint(uids) and set(map(type, nodes)) == _JUST_DICT:
        frame_lists = list(map(dict.get, nodes, repeat("ImageFrames"), repeat(_NO_FRAMES)))
        vrs = [v for v in map(dict.get, nodes, repeat("DICOMVRs")) if v is not None]
        frames = list(chain.from_iterable(frame_lists))
        if (
            set(map(type, map(dict.get, nodes, repeat("DICOM")))) == _JUST_DICT
            and _INSTANCE_KEYS.issuperset(chain.from_iterable(nodes))
            and set(map(type, vrs)) <= _JUST_DICT
            and VALID_VRS.issuperset(chain.from_iterable(map(dict.values, vrs)))
            and set(map(type, frame_lists)) == _JUST_LIST
            and set(map(type, frames)) <= _JUST_DICT
            and _FRAME_KEY_SET.issuperset(chain.from_iterable(frames))
        ):
            seen.update(dict.fromkeys(uids, series_uid))
            count = len(uids)
            i_ids[0].extend(repeat(image_set_id, count))
            i_ids[1].extend(repeat(series_uid, count))
            i_ids[2].extend(uids)
            i_nodes.extend(nodes)
            counts = list(map(len, frame_lists))
            f_ids[0].extend(repeat(image_set_id, len(frames)))
            f_ids[1].extend(repeat(series_uid, len(frames)))
            f_ids[2].extend(chain.from_iterable(map(repeat, uids, counts)))
            f_ids[3].extend(chain.from_iterable(map(range, repeat(1), [c + 1 for c in counts])))
            f_nodes.extend(frames)
            return
    _collect_series_checked(image_set_id, series_uid, instances, seen, i_ids, i_nodes, f_ids, f_nodes)


_JUST_DICT = {dict}
_JUST_LIST = {list}


def _collect_series_checked(
    image_set_id: str,
    series_uid: str,
    instances: dict,
    seen: dict[str, str],
    i_ids: list[list[str]],
    i_nodes: list[dict],
    f_ids: list[list],
    f_nodes: list[dict],
) -> None:
    """``_collect_series`` node by node: the full checks run for a node that fails the quick ones."""
    i_a, i_b, i_c = i_ids
    f_a, f_b, f_c, f_d = f_ids
    for sop_uid, instance in instances.items():
        if sop_uid in seen:
            raise FlattenError(
                image_set_id, f"duplicate SOPInstanceUID {sop_uid} in series {seen[sop_uid]} and {series_uid}"
            )
        seen[sop_uid] = series_uid
        vrs = instance.get("DICOMVRs") if type(instance) is dict else None
        if (
            type(instance) is not dict
            or type(instance.get("DICOM")) is not dict
            or not _INSTANCE_KEYS.issuperset(instance)
            or (vrs is not None and (type(vrs) is not dict or not VALID_VRS.issuperset(vrs.values())))
        ):
            _check_instance(image_set_id, sop_uid, instance)
        i_a.append(image_set_id)
        i_b.append(series_uid)
        i_c.append(sop_uid)
        i_nodes.append(instance)
        frames = instance.get("ImageFrames", _NO_FRAMES)
        if frames is _NO_FRAMES:
            continue
        if type(frames) is not list or not all(type(f) is dict and _FRAME_KEY_SET.issuperset(f) for f in frames):
            _collect_frames(image_set_id, series_uid, sop_uid, frames, f_ids, f_nodes)
            continue
        count = len(frames)
        f_a.extend([image_set_id] * count)
        f_b.extend([series_uid] * count)
        f_c.extend([sop_uid] * count)
        f_d.extend(range(1, count + 1))
        f_nodes.extend(frames)


_NO_FRAMES: list = []


def _check_instance(image_set_id: str, sop_uid: str, instance: Any) -> None:
    """An instance node must be an object with a DICOM object, known node keys and DICOMVRs of known VRs."""
    if type(instance) is not dict or type(instance.get("DICOM")) is not dict:
        raise FlattenError(image_set_id, f"instance {sop_uid} is not an object with a DICOM object")
    if not _INSTANCE_KEYS.issuperset(instance):
        _slow_key_check(instance, _INSTANCE_KEYS, f"instance {sop_uid}", image_set_id)
    vrs = instance.get("DICOMVRs")
    if vrs is not None and type(vrs) is not dict:
        raise FlattenError(image_set_id, f"instance {sop_uid}: DICOMVRs is not an object")
    if vrs and not VALID_VRS.issuperset(vrs.values()):
        tag, vr = next((t, v) for t, v in vrs.items() if v not in VALID_VRS)
        raise FlattenError(image_set_id, f"instance {sop_uid}: unknown VR {vr!r} for {tag} in DICOMVRs")


def _collect_frames(
    image_set_id: str, series_uid: str, sop_uid: str, frames: Any, f_ids: list[list], f_nodes: list[dict]
) -> None:
    if type(frames) is not list:
        raise FlattenError(image_set_id, f"instance {sop_uid}: ImageFrames is not a list of objects")
    for number, frame in enumerate(frames, 1):
        if type(frame) is not dict:
            raise FlattenError(image_set_id, f"instance {sop_uid}: ImageFrames is not a list of objects")
        if not _FRAME_KEY_SET.issuperset(frame):
            _slow_key_check(frame, _FRAME_KEY_SET, f"instance {sop_uid} ImageFrames", image_set_id)
        for ids, key in zip(f_ids, (image_set_id, series_uid, sop_uid, number), strict=True):
            ids.append(key)
        f_nodes.append(frame)


@dataclass
class Part:
    """One batch's frames before they are DataFrames: the keys of each level's rows, and per frame its column
    arrays and codecs. ``assemble`` makes the frames of one or many parts at once."""

    s_ids: list[str]
    series_counts: list[int]
    r_ids: list[list[str]]
    instance_counts: list[int]
    i_ids: list[list[str]]
    frame_counts: list[int | None]
    f_ids: list[list]
    columns: dict[str, dict[str, Any]]
    codecs: dict[str, dict[str, str]]
    levels: dict[str, str]

    def rows(self, name: str) -> int:
        ids = {"studies": self.s_ids, "series": self.r_ids[0], "instances": self.i_ids[0], "frames": self.f_ids[0]}
        return len(ids[name])


def _collect_all(
    documents: list[dict[str, Any]], strict: bool, failures: list
) -> tuple[list[dict], list[list], list[dict], list[list], list[dict], list[list], list[dict]]:
    """The valid documents and their series, instance and frame keys and nodes (checked, see ``check``)."""
    r_ids: list[list[str]] = [[], []]
    r_nodes: list[dict] = []
    i_ids: list[list[str]] = [[], [], []]
    i_nodes: list[dict] = []
    f_ids: list[list] = [[], [], [], []]
    f_nodes: list[dict] = []
    seen_ids: set[str] = set()
    s_docs: list[dict] = []
    all_lists: tuple[list, ...] = (*r_ids, r_nodes, *i_ids, i_nodes, *f_ids, f_nodes)
    for document in documents:
        marks = [len(x) for x in all_lists]
        try:
            image_set_id = _collect(document, seen_ids, r_ids, r_nodes, i_ids, i_nodes, f_ids, f_nodes)
        except FlattenError as exc:
            for lst, mark in zip(all_lists, marks, strict=True):
                del lst[mark:]
            if strict:
                raise
            failures.append((exc.image_set_id, "flatten", str(exc)))
            continue
        seen_ids.add(image_set_id)
        s_docs.append(document)
    return s_docs, r_ids, r_nodes, i_ids, i_nodes, f_ids, f_nodes


def _part(
    documents: list[dict[str, Any]], strict: bool, failures: list, levels: dict[str, str]
) -> tuple[Part, set[str]]:
    """The columns of every valid document, and the image sets whose DICOM keys start with ``@`` (then refused
    by the caller)."""
    s_docs, r_ids, r_nodes, i_ids, i_nodes, f_ids, f_nodes = _collect_all(documents, strict, failures)
    s_ids, s_plain, s_other = _study_columns(s_docs, levels)
    for columns in (s_plain, s_other):
        for values in columns.values():
            values.extend([MISSING] * (len(s_ids) - len(values)))
    study_columns, study_codecs = _level_columns({**s_plain, **s_other})
    r_dicom = _transpose([node["DICOM"] for node in r_nodes])
    r_other = {"@" + k: v for k, v in _transpose(r_nodes).items() if k not in ("DICOM", "Instances")}
    series_codecs: dict[str, str] = {}
    _uid_column(r_dicom, "SeriesInstanceUID", r_ids[1], series_codecs)
    series_columns, series_codecs = _level_columns({**r_dicom, **r_other}, codecs=series_codecs)
    i_dicom = _transpose([node["DICOM"] for node in i_nodes])
    i_other = {"@" + k: v for k, v in _transpose(i_nodes).items() if k not in ("DICOM", "ImageFrames")}
    instance_codecs: dict[str, str] = {}
    _uid_column(i_dicom, "SOPInstanceUID", i_ids[2], instance_codecs)
    instance_columns, instance_codecs = _level_columns(
        {**i_dicom, **i_other}, _private_vrs(i_nodes), codecs=instance_codecs
    )
    frame_counts = [len(node["ImageFrames"]) if "ImageFrames" in node else None for node in i_nodes]
    instance_columns["@ImageFrames"] = pd.array(frame_counts, dtype="Int64")
    instance_codecs["@ImageFrames"] = COUNT
    frame_columns, frame_codecs = _frames_columns(f_nodes)
    reserved: set[str] = set()
    if any(key[:1] == "@" for cols in (s_plain, r_dicom, i_dicom) for key in cols):
        for document in s_docs:
            try:
                check(document)
            except FlattenError as exc:
                reserved.add(str(exc.image_set_id))
    part = Part(
        s_ids,
        [len(document["Study"]["Series"]) for document in s_docs],
        r_ids,
        [len(node["Instances"]) for node in r_nodes],
        i_ids,
        frame_counts,
        f_ids,
        {"studies": study_columns, "series": series_columns, "instances": instance_columns, "frames": frame_columns},
        {"studies": study_codecs, "series": series_codecs, "instances": instance_codecs, "frames": frame_codecs},
        {k: levels[k] for k in s_plain},
    )
    return part, reserved


def _study_columns(s_docs: list[dict], levels: dict[str, str]) -> tuple[list[str], dict[str, list], dict[str, list]]:
    """The studies rows: ImageSetIDs, plain attribute columns (at the level ``levels`` first placed each key) and
    the other columns (document keys, ``@Level:Key`` for a key met at another level, node keys)."""
    s_ids: list[str] = []
    s_plain: dict[str, list] = {}
    s_other: dict[str, list] = {}
    for row, document in enumerate(s_docs):
        image_set_id = document["ImageSetID"]
        s_ids.append(image_set_id)
        _put(s_other, row, (("@" + k, v) for k, v in document.items() if k not in _ROOT_STRUCTURE))
        for level in ("Patient", "Study"):
            node = document[level]
            plain = []
            qualified = []
            for key, value in node["DICOM"].items():
                if levels.setdefault(key, level) == level:
                    plain.append((key, value))
                else:
                    qualified.append((f"@{level}:{key}", value))
            _put(s_plain, row, plain)
            if qualified:
                _put(s_other, row, qualified)
            extra = [(f"@{level}:@{k}", v) for k, v in node.items() if k not in ("DICOM", "Series")]
            if extra:
                _put(s_other, row, extra)
    return s_ids, s_plain, s_other


def _private_vrs(nodes: list[dict]) -> Any:
    """``vr_of`` for private-tag columns of ``instances``: the VR every instance holding the tag gives it in its
    DICOMVRs (None when they disagree or do not say: the column is then ``object``)."""

    def vr_of(name: str, values: Sequence) -> str | None:
        found = {
            (node.get("DICOMVRs") or {}).get(name) if type(node.get("DICOMVRs")) is dict else None
            for node, value in zip(nodes, values, strict=True)
            if value is not MISSING
        }
        return found.pop() if len(found) == 1 else None

    return vr_of


_FRAME_CODECS = {"ID": STR, PYRAMID: PYRAMID_CODEC}


def _frames_columns(nodes: list[dict]) -> tuple[dict[str, Any], dict[str, str]]:
    """The frames frame's columns: known keys typed (Int64 / str when exact), full-resolution size, extras as @Key."""
    missing = MISSING
    transposed = _transpose(nodes)
    absent = (missing,) * len(nodes)
    known: dict[str, Sequence] = {key: transposed.get(key, absent) for key in FRAME_KEYS}
    built = {PYRAMID: column_array(known[PYRAMID], PYRAMID_CODEC)}
    derived = full_resolution(built[PYRAMID][0]) if built[PYRAMID][1] == PYRAMID_CODEC else None
    if derived is None:
        fulls = [p[-1] if type(p) is list and p and type(p[-1]) is dict else {} for p in known[PYRAMID]]
        for name in DERIVED_FRAME_COLUMNS:
            known[name] = [full.get(name, missing) for full in fulls]
    else:
        built.update((name, (derived[name], INT64)) for name in DERIVED_FRAME_COLUMNS)
    columns: dict[str, Any] = {}
    codecs: dict[str, str] = {}
    for name in FRAME_COLUMNS:
        columns[name], codecs[name] = built.get(name) or column_array(known[name], _FRAME_CODECS.get(name, INT64))
    for key, values in transposed.items():
        if key not in _FRAME_KEY_SET:
            columns["@" + key], codecs["@" + key] = column_array(values, STR)
    return columns, codecs


_FRAME_NAMES = ("studies", "series", "instances", "frames")


def assemble(parts: list[Part]) -> Flattened | None:
    """The frames of batches flattened one after the other (with one shared ``levels``), exactly as flattening
    all their documents at once gives them: each column's arrays concatenated once, each index built once. None
    when the batches' codecs differ for a column (one batch spelled its empty values ``null``, another ``""``,
    say): then flatten their documents together instead."""
    codecs = _merged_codecs(parts)
    if codecs is None:
        return None
    one = parts[0] if len(parts) == 1 else None

    def joined(name: str) -> list:
        return getattr(one, name) if one else list(chain.from_iterable(getattr(p, name) for p in parts))

    def joined_ids(name: str, width: int) -> list[list]:
        if one:
            return getattr(one, name)
        return [list(chain.from_iterable(getattr(p, name)[i] for p in parts)) for i in range(width)]

    study_index = build_index([joined("s_ids")], STUDY_INDEX)
    series_index = _child_index(study_index, joined("series_counts"), joined_ids("r_ids", 2), SERIES_INDEX)
    instance_index = _child_index(series_index, joined("instance_counts"), joined_ids("i_ids", 3), INSTANCE_INDEX)
    frame_index = _child_index(instance_index, joined("frame_counts"), joined_ids("f_ids", 4), FRAME_INDEX)
    indexes = {"studies": study_index, "series": series_index, "instances": instance_index, "frames": frame_index}
    frames = {name: _frame(_concat_columns(parts, name), indexes[name]) for name in _FRAME_NAMES}
    levels: dict[str, str] = {}
    for part in parts:
        levels.update(part.levels)
    return Flattened(**frames, levels=levels, codecs=codecs)


def _merged_codecs(parts: list[Part]) -> dict[str, dict[str, str]] | None:
    """Every column's codec across the batches; None when two batches chose differently for a column (or only
    some of them hold a UID in the index)."""
    codecs: dict[str, dict[str, str]] = {}
    for name in _FRAME_NAMES:
        merged: dict[str, str] = {}
        for part in parts:
            for column, codec in part.codecs[name].items():
                if merged.setdefault(column, codec) != codec:
                    return None
        if INDEX in merged.values() and not all(INDEX in p.codecs[name].values() for p in parts if p.rows(name)):
            return None
        codecs[name] = merged
    return codecs


def _concat_columns(parts: list[Part], name: str) -> dict[str, Any]:
    """Frame ``name``'s columns over the batches, ordered as one flatten orders them (DICOM keys, node keys, frame
    counts); a batch without a column holds it absent."""
    if len(parts) == 1:
        return {column: frame_array(values) for column, values in parts[0].columns[name].items()}
    seen = dict.fromkeys(chain.from_iterable(p.columns[name] for p in parts))
    order = [c for c in seen if not c.startswith("@")]
    order += [c for c in seen if c.startswith("@") and c != "@ImageFrames"]
    order += [c for c in seen if c == "@ImageFrames"]
    rows = [p.rows(name) for p in parts]
    return {column: concat_arrays([p.columns[name].get(column) for p in parts], rows) for column in order}


# --- unflatten ---------------------------------------------------------------------------------------------


def _default_study_level(key: str) -> str:
    """Level for a plain ``studies`` column the batch never placed (a new column): Patient or Study."""
    try:
        from curation.model.levels import level_of
    except ImportError:  # pragma: no cover - levels.py is another helper's module
        return "Study"
    try:
        return "Patient" if level_of(key) == "Patient" else "Study"
    except (KeyError, ValueError):
        return "Study"


def split_column(column: str) -> tuple[str | None, str, bool]:
    """``(qualifier level or None, key, is_node_key)`` of a column name (see the module docstring)."""
    level = None
    if column.startswith("@"):
        head, sep, rest = column[1:].partition(":")
        if sep and head in QUALIFIER_LEVELS:
            level, column = head, rest
    if column.startswith("@"):
        return level, column[1:], True
    return level, column, False


def column_codec(frame: pd.DataFrame, column: str, codecs: dict[str, str] | None) -> str:
    """The codec of ``frame[column]``: the one flatten recorded, else inferred from its VR and dtype."""
    codec = (codecs or {}).get(column)
    if codec is not None and codec != INDEX:
        return codec
    _, key, node_key = split_column(column)
    return infer_codec(key, None if node_key else dicom.vr_of(key), frame[column].dtype, node_key)


def _cells(frame: pd.DataFrame, column: str, codecs: dict[str, str] | None = None) -> Iterator[tuple[int, Any]]:
    """``(row position, JSON value)`` of every present cell of ``frame[column]`` (``REMOVE`` counts as absent)."""
    codec = column_codec(frame, column, codecs)
    values = frame[column].to_numpy(dtype=object)
    for i, value in enumerate(values):
        if not is_absent(value) and not is_remove(value):
            yield i, decode(value, codec)


def _positions(index: pd.Index) -> list[tuple]:
    return [k if isinstance(k, tuple) else (k,) for k in index]


def unflatten(flattened: Flattened) -> list[dict[str, Any]]:
    """Rebuild the documents of ``flattened`` (one per ``studies`` row, in order).

    Rows whose parent row is missing (an instance whose series row was dropped) are ignored. Derived
    ``frames`` columns (Width, Height, Checksum) are ignored: the pyramid list is the source.
    """
    studies, series, instances, frames = flattened.studies, flattened.series, flattened.instances, flattened.frames
    codecs = flattened.codecs
    documents: dict[str, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for (image_set_id,) in _positions(studies.index):
        root = {"_extra": {}, "ImageSetID": image_set_id, "Patient": {"DICOM": {}}, "Study": {"DICOM": {}}}
        roots.append(root)
        documents[image_set_id] = root
    for column in studies.columns:
        level, key, node_key = split_column(column)
        if level is None and node_key:
            for i, value in _cells(studies, column, codecs.get("studies")):
                roots[i]["_extra"][key] = value
            continue
        if level is None:
            level = flattened.levels.get(key) or _default_study_level(key)
        if level not in ("Patient", "Study"):
            raise ValueError(f"studies column {column!r} names level {level}")
        for i, value in _cells(studies, column, codecs.get("studies")):
            node = roots[i][level]
            if node_key:
                node[key] = value
            else:
                node["DICOM"][key] = value
    for root in roots:
        root["Study"]["Series"] = {}
    series_nodes = _rebuild_level(
        series, documents, 2, lambda doc: doc["Study"]["Series"], "Instances", codecs.get("series", {})
    )
    instance_nodes = _rebuild_level(
        instances, series_nodes, 3, lambda node: node["Instances"], None, codecs.get("instances", {})
    )
    _attach_frames(frames, instances, instance_nodes, codecs.get("frames", {}))
    result = []
    for root in roots:
        extra = root.pop("_extra")
        result.append({**extra, **root})
    return result


def _rebuild_level(
    frame: pd.DataFrame, parents: dict, depth: int, children_of: Any, child_key: str | None, codecs: dict[str, str]
) -> dict[tuple, dict]:
    """Create a node per row of ``frame`` under its parent; returns nodes by index tuple.

    A UID the index holds (codec ``index``: ``SeriesInstanceUID`` of series, ``SOPInstanceUID`` of instances) is
    written from the row's key, unless the frame has that column and the row's cell there is present.
    """
    nodes: dict[tuple, dict] = {}
    row_nodes: list[dict | None] = []
    for key in _positions(frame.index):
        parent = parents.get(key[0] if depth == 2 else key[:-1])
        if parent is None:
            row_nodes.append(None)
            continue
        node: dict[str, Any] = {"DICOM": {}}
        children_of(parent)[key[-1]] = node
        nodes[key] = node
        row_nodes.append(node)
    for column in frame.columns:
        if column == "@ImageFrames":
            continue
        level, name, node_key = split_column(column)
        if level is not None:
            raise ValueError(f"column {column!r} is qualified with a level; unflatten takes level frames")
        for i, value in _cells(frame, column, codecs):
            row = row_nodes[i]
            if row is None:
                continue
            if node_key:
                row[name] = value
            else:
                row["DICOM"][name] = value
    for uid in (k for k, codec in codecs.items() if codec == INDEX):
        for label, node in nodes.items():
            node["DICOM"].setdefault(uid, label[-1])
    if child_key is not None:
        for node in nodes.values():
            node[child_key] = {}
    return nodes


def _attach_frames(
    frames: pd.DataFrame, instances: pd.DataFrame, instance_nodes: dict[tuple, dict], codecs: dict[str, str]
) -> None:
    counts: dict[tuple, Any] = {}
    if "@ImageFrames" in instances.columns:
        for key, count in zip(
            _positions(instances.index), instances["@ImageFrames"].to_numpy(dtype=object), strict=True
        ):
            counts[key] = count
    lists: dict[tuple, list] = {}
    for key in _positions(instances.index):
        node = instance_nodes.get(key)
        if node is None:
            continue
        if key in counts and is_absent(counts[key]):
            continue
        lists[key] = node["ImageFrames"] = []
    if not len(frames):
        for key, items in lists.items():
            if key not in counts and not items:
                del instance_nodes[key]["ImageFrames"]
        return
    columns = [c for c in frames.columns if c not in DERIVED_FRAME_COLUMNS]
    arrays = {c: frames[c].to_numpy(dtype=object) for c in columns}
    names = {c: (c[1:] if c.startswith("@") else c) for c in columns}
    kinds = {c: column_codec(frames, c, codecs) for c in columns}
    for i, key in enumerate(_positions(frames.index)):
        target = lists.get(key[:3])
        if target is None:
            continue
        item = {}
        for c in (*(n for n in FRAME_KEYS if n in arrays), *(c for c in columns if c not in FRAME_KEYS)):
            value = arrays[c][i]
            if not is_absent(value):
                item[names[c]] = decode(value, kinds[c])
        target.append(item)
    for key, items in lists.items():
        if key not in counts and not items:
            del instance_nodes[key]["ImageFrames"]


# --- joined view -------------------------------------------------------------------------------------------


def wide_view(studies: pd.DataFrame, series: pd.DataFrame, instances: pd.DataFrame) -> pd.DataFrame:
    """Instance-level frame with every level joined: studies, then series, then instance columns.

    A name already taken by a higher level is qualified with the lower level: ``@Series:Name`` or
    ``@Instance:Name`` (the higher level keeps the plain name). Series without instances have no row.
    """
    index = instances.index
    study_keys = pd.Index(index.get_level_values(0))
    series_keys = pd.MultiIndex.from_arrays([index.get_level_values(0), index.get_level_values(1)])
    parts = []
    taken: set[str] = set()
    for frame, keys, level in (
        (studies, study_keys, None),
        (series, series_keys, "Series"),
        (instances, None, "Instance"),
    ):
        part: pd.DataFrame | None
        if keys is None:
            part = frame
        else:
            positions = frame.index.get_indexer(keys)
            part = frame.iloc[positions].set_axis(index, axis=0) if len(frame.columns) else None
            if part is not None and (positions < 0).any():
                part = part.mask(pd.Series(positions < 0, index=index), other=None)
        if part is None:
            continue
        renamed = {c: f"@{level}:{c}" for c in part.columns if c in taken}
        taken.update(renamed.values(), (c for c in part.columns if c not in renamed))
        parts.append(part.rename(columns=renamed) if renamed else part)
    if not parts:
        return pd.DataFrame(index=index)
    return pd.concat(parts, axis=1) if len(parts) > 1 else parts[0].copy()


def wide_codecs(codecs: Mapping[str, Mapping[str, str]], columns: Mapping[str, Iterable[Any]]) -> dict[str, str]:
    """The codecs of ``wide_view``'s columns (named as it names them) from the level frames' ``columns``."""
    out: dict[str, str] = {}
    for source, level in (("studies", None), ("series", "Series"), ("instances", "Instance")):
        own = codecs.get(source, {})
        for column in columns[source]:
            name = f"@{level}:{column}" if column in out else column
            out[name] = own.get(column, OBJECT)
    return out
