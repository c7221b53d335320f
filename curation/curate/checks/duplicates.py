"""Instances held by more than one image set: leftover non-primary copies, and SOPInstanceUIDs that collide.

An instance's content is its SOPInstanceUID with the full-resolution checksums of its frames (the
``frames`` frame's ``Checksum``: AHI's ``PixelDataChecksumFromBaseToFullResolution`` at full resolution), and
its digest adds its DICOM attributes (the instance node's ``DICOM``, without AHI's node keys). Only the instances
whose SOPInstanceUID is in more than one image set are looked at, so the work grows with the duplicates, not the
datastore. Whether an image set is primary comes from ``snapshot.primary`` (what the search answered); an image
set the snapshot does not know about counts as primary, as ``diff`` counts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd

from curation.curate.checks.context import CheckContext
from curation.curate.checks.findings import Finding
from curation.frames.cells import decode
from curation.model import dictionary
from curation.model.missing import is_absent


@dataclass(frozen=True)
class Holders:
    """The instances whose SOPInstanceUID is in more than one image set: ``rows`` (their positions in
    ``instances``), ``labels`` (ImageSetID, SeriesInstanceUID, SOPInstanceUID) and each one's ``content``
    (SOPInstanceUID, full-resolution checksums)."""

    rows: np.ndarray
    labels: list[tuple[str, str, str]]
    content: list[tuple[str, tuple[Any, ...]]]


def _checksums(context: CheckContext, labels: list[tuple[str, str, str]]) -> list[tuple[Any, ...]]:
    """The full-resolution checksums of each instance's frames, in frame order (() without frames)."""
    frames = context.frame("frames")
    if not labels or frames.empty or "Checksum" not in frames.columns:
        return [()] * len(labels)
    owners = cast(pd.MultiIndex, frames.index).droplevel(["frame"])
    wanted = owners.isin(pd.MultiIndex.from_tuples(labels, names=owners.names))
    picked = frames.loc[wanted, "Checksum"]
    found: dict[tuple[str, str, str], list[Any]] = {}
    for label, value in zip(owners[wanted], picked.to_numpy(dtype=object), strict=True):
        found.setdefault(tuple(label), []).append(None if is_absent(value) else int(value))
    return [tuple(found.get(label, ())) for label in labels]


def holders(context: CheckContext) -> Holders:
    """The instances of SOPInstanceUIDs held by more than one image set (computed once per context)."""
    if "holders" in context.memo:
        cached: Holders = context.memo["holders"]
        return cached
    index = context.frame("instances").index
    sops, _ = pd.factorize(index.get_level_values("SOPInstanceUID"))
    sets, _ = pd.factorize(index.get_level_values("ImageSetID"))
    distinct = pd.DataFrame({"sop": sops, "set": sets}).drop_duplicates()
    per_sop = np.bincount(distinct["sop"].to_numpy(), minlength=int(sops.max()) + 1 if len(sops) else 0)
    rows = np.flatnonzero(per_sop[sops] > 1) if len(sops) else np.zeros(0, dtype=np.int64)
    labels = [(str(a), str(b), str(c)) for a, b, c in index[rows]]
    content = [(label[2], checksums) for label, checksums in zip(labels, _checksums(context, labels), strict=True)]
    result = Holders(rows, labels, content)
    context.memo["holders"] = result
    return result


def file_meta(key: str) -> bool:
    """True for a File Meta Information attribute (group 0002): it describes the file an instance came in (its
    transfer syntax, the writing application), not the instance (PS3.10 7.1)."""
    tag = dictionary.tag_of(key)
    return tag is not None and tag >> 16 == 0x0002


def _dataset_columns(context: CheckContext, name: str) -> list[str]:
    return [c for c in context.dicom_columns(name) if not file_meta(c)]


def _differences(context: CheckContext, name: str, pairs: list[tuple[Any, Any]]) -> set[str]:
    """The attribute columns of frame ``name`` whose values differ between the rows of some (label, label) pair."""
    frame = context.frame(name)
    columns = context.dicom_columns(name)
    differing: set[str] = set()
    for left, right in pairs:
        if left not in frame.index or right not in frame.index:
            continue
        a, b = frame.loc[left, columns], frame.loc[right, columns]
        for column, x, y in zip(columns, a.to_numpy(dtype=object), b.to_numpy(dtype=object), strict=True):
            if (is_absent(x) != is_absent(y)) or (not is_absent(x) and x != y):
                differing.add(column)
    return differing


def _copies(context: CheckContext) -> dict[str, list[str]]:
    """Each non-primary image set all of whose instances (SOPInstanceUID and frames' checksums) are in image sets
    that are not known to be non-primary, with those image sets; computed once per context."""
    if "copies" in context.memo:
        cached: dict[str, list[str]] = context.memo["copies"]
        return cached
    found = holders(context)
    references: dict[tuple[str, tuple[Any, ...]], set[str]] = {}
    for (image_set, _, _), content in zip(found.labels, found.content, strict=True):
        if context.primary.get(image_set) is not False:
            references.setdefault(content, set()).add(image_set)
    totals = pd.Series(context.image_set_of("instances")).value_counts()
    matched: dict[str, list[set[str]]] = {}
    for (image_set, _, _), content in zip(found.labels, found.content, strict=True):
        if context.primary.get(image_set) is False:
            matched.setdefault(image_set, []).append(references.get(content, set()))
    copies = {
        image_set: sorted(set().union(*sets))
        for image_set, sets in matched.items()
        if len(sets) == int(totals.get(image_set, 0)) and all(sets)
    }
    context.memo["copies"] = copies
    return copies


def non_primary_duplicate(context: CheckContext) -> list[Finding]:
    """**non_primary_duplicate** (warning). A non-primary image set every instance of which (SOPInstanceUID and
    the full-resolution checksums of its frames) is also in primary image sets: a leftover copy, or a copy with
    an edit not yet promoted. ``found`` are those primary image sets with how many of its instances each holds;
    ``detail`` counts the attributes that differ from them (0: a leftover copy; the file meta group 0002, which
    describes the imported file, is named apart).

    Fix: ``delete_image_set`` (``suggested`` is the ImageSetID): a command to review and run yourself
    (``client.delete_image_set(datastoreId=..., imageSetId=...)``), never an edit.
    """
    found = holders(context)
    findings = []
    for image_set, primaries in sorted(_copies(context).items()):
        counts: dict[str, int] = {}
        pairs: dict[str, list[tuple[Any, Any]]] = {"instances": [], "series": [], "studies": []}
        by_content = {
            content: label for label, content in zip(found.labels, found.content, strict=True) if label[0] in primaries
        }
        for label, content in zip(found.labels, found.content, strict=True):
            if label[0] != image_set:
                continue
            other = by_content[content]
            counts[other[0]] = counts.get(other[0], 0) + 1
            pairs["instances"].append((label, other))
            pairs["series"].append((label[:2], (other[0], label[1])))
            pairs["studies"].append((image_set, other[0]))
        every = set().union(*(_differences(context, name, list(dict.fromkeys(p))) for name, p in pairs.items()))
        differing = {c for c in every if not file_meta(c)}
        meta = sorted(every - differing)
        values = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        total = sum(counts.values())
        shown = ", ".join(sorted(differing)[:5]) + (" ..." if len(differing) > 5 else "")
        findings.append(
            Finding(
                check="non_primary_duplicate",
                severity="warning",
                level="ImageSet",
                key=image_set,
                attribute=None,
                image_sets=tuple(sorted({image_set, *primaries})),
                found=values,
                rows=(image_set,),
                fix="delete_image_set",
                suggested=image_set,
                detail=(
                    f"all {total} instances of non-primary image set {image_set} (UIDs and pixel checksums) are in "
                    f"primary image set(s) {', '.join(primaries)}; "
                    + (
                        f"{len(differing)} attribute(s) differ ({shown}): an edit not promoted, or another import"
                        if differing
                        else "no attribute differs: a leftover copy"
                    )
                    + (f" (the files differ in {', '.join(meta)})" if meta else "")
                    + f"; review, then client.delete_image_set(datastoreId=..., imageSetId='{image_set}')"
                ),
            )
        )
    return findings


def _digest(context: CheckContext, position: int, checksums: tuple[Any, ...]) -> str:
    """A short digest of one instance's DICOM attributes and frames' checksums."""
    frame = context.frame("instances")
    columns = _dataset_columns(context, "instances")
    codecs: Mapping[str, str] = context.flat.codecs.get("instances", {})
    row = frame.iloc[position]
    content = {c: decode(row[c], codecs.get(c, "object")) for c in columns if not is_absent(row[c])}
    text = orjson.dumps([content, list(checksums)], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(text, digest_size=6).hexdigest()


def duplicate_sop_instance(context: CheckContext) -> list[Finding]:
    """**duplicate_sop_instance** (error). A SOPInstanceUID in more than one image set, once the image sets that
    ``non_primary_duplicate`` explains are left out. ``found`` are the content digests (the DICOM attributes but
    the file meta group 0002, and the frames' checksums) with how many image sets hold each; ``rows`` the
    instances.

    Fix: None. Identical content: delete the extra image set after review; different content: one of them
    needs a new SOPInstanceUID (``force``; on a primary image set, ``primary="promote"``).
    """
    found = holders(context)
    explained = set(_copies(context))
    by_sop: dict[str, list[int]] = {}
    for number, label in enumerate(found.labels):
        if label[0] not in explained:
            by_sop.setdefault(label[2], []).append(number)
    findings = []
    for sop, numbers in sorted(by_sop.items()):
        image_sets = tuple(sorted({found.labels[n][0] for n in numbers}))
        if len(image_sets) < 2:
            continue
        digests = [_digest(context, int(found.rows[n]), found.content[n][1]) for n in numbers]
        counts: dict[str, int] = {}
        for digest in digests:
            counts[digest] = counts.get(digest, 0) + 1
        values = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        same = len(counts) == 1
        findings.append(
            Finding(
                check="duplicate_sop_instance",
                severity="error",
                level="Instance",
                key=sop,
                attribute="SOPInstanceUID",
                image_sets=image_sets,
                found=values,
                rows=tuple(found.labels[n] for n in numbers),
                detail=(
                    f"SOPInstanceUID {sop} is in {len(image_sets)} image sets "
                    + (
                        "with identical content: delete the extra image set after review"
                        if same
                        else f"with {len(counts)} different contents: one needs a new SOPInstanceUID "
                        '(force; on a primary image set, primary="promote")'
                    )
                ),
            )
        )
    return findings
