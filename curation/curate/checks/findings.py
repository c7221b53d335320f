"""The findings table: one ``Finding`` per inconsistency, its stable id, and the DataFrame ``check`` returns.

Columns (index ``finding``, a stable id):

============  ==========================================================================================
check         the check's name (see ``curation.curate.checks.checking``)
severity      ``error`` (AHI or a reader will mistake the data), ``warning`` (likely wrong), ``info``
level         where the attribute lives, and so where a fix writes: Patient, Study, Series, Instance;
              ImageSet for findings about whole image sets
key           the group the finding is about: a PatientID, a StudyInstanceUID, ``ImageSetID/SeriesUID``,
              a SOPInstanceUID, an ImageSetID, or (invalid_value) the value itself
attribute     the attribute (a keyword or an 8-hex tag), None for image-set findings
image_sets    the image sets involved (a tuple, sorted)
primary       their ``isPrimary`` flags, in the same order (None where the snapshot does not know)
found         the values found, with their counts, most frequent first: ``((value, count), ...)``; values as
              the frames hold them (text after the PS3.5 padding rules), None for absent (not named
              ``values``, which is a DataFrame attribute)
rows          the frame rows the finding is about, as index labels of the level's frame (``studies`` for
              Patient/Study/ImageSet, ``series``, ``instances``): the rows a fix edits
fix           how to fix it: ``majority``, ``lookup``, ``fill``, ``renumber``, ``reformat`` (edits that
              ``curation.fix`` writes), ``delete_image_set`` (a command to review, never an edit), or None
suggested     the value a fix writes (renumber: a tuple aligned with ``rows``); None when a person must
              decide (a tie, a clinical fact): give it in ``fix(..., lookup=)`` or edit this column
detail        one sentence saying what was found and why it matters
============  ==========================================================================================

The id is the first 16 hex digits of BLAKE2b over the check, the image sets, the key, the attribute and a
discriminator (the invalid value, the kind of slice problem), so a finding keeps its id from run to run and a
reviewed list of accepted findings can be passed to ``check(..., ignore=)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

COLUMNS = (
    "check",
    "severity",
    "level",
    "key",
    "attribute",
    "image_sets",
    "primary",
    "found",
    "rows",
    "fix",
    "suggested",
    "detail",
)
SEVERITIES = ("error", "warning", "info")
#: Fixes that ``curation.fix`` turns into edited frames.
EDIT_FIXES = frozenset({"majority", "lookup", "fill", "renumber", "reformat"})


@dataclass(frozen=True)
class Finding:
    """One row of the findings table (see the module docstring); ``discriminator`` only enters the id."""

    check: str
    severity: str
    level: str
    key: str
    attribute: str | None
    image_sets: tuple[str, ...]
    found: tuple[tuple[Any, int], ...]
    rows: tuple[Any, ...]
    fix: str | None = None
    suggested: Any = None
    detail: str = ""
    discriminator: str = ""

    @property
    def id(self) -> str:
        """The stable id (see the module docstring)."""
        text = "\x1f".join([self.check, ",".join(self.image_sets), self.key, self.attribute or "", self.discriminator])
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def findings_frame(findings: Iterable[Finding], primary: Mapping[str, bool], order: Iterable[str] = ()) -> pd.DataFrame:
    """The findings as the table ``check`` returns: object columns, sorted by severity, then the check's place in
    ``order``, key, attribute and id (deterministic)."""
    rank = {name: i for i, name in enumerate(order)}
    rows = sorted(
        findings,
        key=lambda f: (
            SEVERITIES.index(f.severity),
            rank.get(f.check, len(rank)),
            f.check,
            f.key,
            f.attribute or "",
            f.id,
        ),
    )
    data = {
        "check": [f.check for f in rows],
        "severity": [f.severity for f in rows],
        "level": [f.level for f in rows],
        "key": [f.key for f in rows],
        "attribute": [f.attribute for f in rows],
        "image_sets": [f.image_sets for f in rows],
        "primary": [tuple(primary.get(i) for i in f.image_sets) for f in rows],
        "found": [f.found for f in rows],
        "rows": [f.rows for f in rows],
        "fix": [f.fix for f in rows],
        "suggested": [f.suggested for f in rows],
        "detail": [f.detail for f in rows],
    }
    index = pd.Index([f.id for f in rows], name="finding", dtype=object)
    return pd.DataFrame({name: pd.Series(data[name], index=index, dtype=object) for name in COLUMNS}, index=index)


def shown(value: Any) -> str:
    """A value as a finding's detail shows it: text quoted, absent named."""
    if value is None:
        return "(absent)"
    return repr(value)


def counted(values: tuple[tuple[Any, int], ...], limit: int = 4) -> str:
    """``'A' ×2, 'B' ×1`` (the first ``limit`` values, then how many more)."""
    text = ", ".join(f"{shown(value)} ×{count}" for value, count in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")
