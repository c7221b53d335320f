"""``updates.PlainSets`` (many payloads of keyword sets checked at once, from their rows) answers what
``check_updates`` answers: the same force reasons, in the same order, wherever it answers; None (the caller
walks) wherever the walk refuses; and an answer for the common case of valid sets of attributes already there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.model.document import read_document
from curation.model.errors import AHIError
from curation.model.updates import PlainSets, check_updates

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
DOCUMENT = read_document(str(REFERENCE / "us-doppler-9-instances.json"))
SERIES = next(iter(DOCUMENT["Study"]["Series"]))
SOPS = sorted(DOCUMENT["Study"]["Series"][SERIES]["Instances"])[:3]

#: nodes as (level, series, sop); the last series and instance are not in the document
NODES = [
    ("Patient", None, None),
    ("Study", None, None),
    ("Series", SERIES, None),
    *[("Instance", SERIES, sop) for sop in SOPS],
    ("Series", "1.2.3.404", None),
    ("Instance", SERIES, "1.2.3.404.1"),
]
KEYS = {
    "Patient": ["PatientName", "PatientSex", "PatientBirthDate", "PatientAge"],
    "Study": ["StudyDescription", "StudyDate", "PatientWeight", "StudyID"],
    "Series": ["SeriesDescription", "Modality", "SeriesNumber", "BodyPartExamined", "SeriesInstanceUID"],
    "Instance": ["InstanceNumber", "ImageType", "Rows", "HeartRate", "SOPInstanceUID", "PixelData", "ContentDate"],
}
VALUES = st.one_of(
    st.sampled_from(["CT", "MR", "DOE^JANE", "20200101", "2020-01-01", "12", "x" * 70, "", "1.5", "A\\B"]),
    st.integers(-3, 70_000),
    st.sampled_from([0.5, -0.0, 2.0, float("inf"), 1e300]),
    st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "12", "x" * 20]), max_size=3),
    st.sampled_from([None, True, [1, 2], [{"CodeValue": "1"}]]),
)
ORDER = {"Patient": 0, "Study": 1, "Series": 2, "Instance": 2}


def _walk_order(spot: tuple[str, str | None, str | None, str]) -> tuple:
    level, series, sop, key = spot
    return ORDER[level], series or "", level == "Instance", sop or "", key


def _rows(spots: dict[tuple, Any]) -> tuple[list, dict[str, Any], list[int]]:
    """The rows of one payload in the walk's order, the payload, and the starts of its runs of one node."""
    rows = sorted(spots.items(), key=lambda item: _walk_order(item[0]))
    payload: dict[str, Any] = {"SchemaVersion": 1.1}
    runs = []
    for number, ((level, series, sop, key), value) in enumerate(rows):
        if not number or rows[number - 1][0][:3] != (level, series, sop):
            runs.append(number)
        holder = payload.setdefault("Patient" if level == "Patient" else "Study", {})
        if level in ("Series", "Instance"):
            holder = holder.setdefault("Series", {}).setdefault(series, {})
        if level == "Instance":
            holder = holder.setdefault("Instances", {}).setdefault(sop, {})
        holder.setdefault("DICOM", {})[key] = value
    return rows, payload, runs


def _check(payloads: list[dict[tuple, Any]], primary: bool) -> list[tuple[Any, list[str] | None]]:
    """(what check_updates says, what PlainSets says) of each payload, all checked by one PlainSets."""
    laid_out, expected = [], []
    for spots in payloads:
        rows, payload, runs = _rows(spots)
        laid_out.append((rows, runs))
        try:
            blob = {"updatableAttributes": orjson.dumps(payload).decode()}
            expected.append(check_updates(DOCUMENT, blob, is_primary=primary, keep_edits=False)[0])
        except AHIError as exc:
            expected.append(exc)
    levels, series, sops, keys, values, runs = [], [], [], [], [], []
    bounds = []
    for rows, starts in laid_out:
        offset = len(keys)
        runs.extend(offset + s for s in starts)
        for (level, series_uid, sop, key), value in rows:
            levels.append(level)
            series.append(series_uid)
            sops.append(sop)
            keys.append(key)
            values.append(value)
        bounds.append((offset, len(keys)))
    checks = PlainSets(levels, series, sops, keys, values, [*runs, len(keys)])
    return [(want, checks.reasons(DOCUMENT, a, b, primary)) for want, (a, b) in zip(expected, bounds, strict=True)]


SPOT = st.sampled_from(NODES).flatmap(lambda node: st.sampled_from(KEYS[node[0]]).map(lambda key: (*node, key)))
PAYLOAD = st.dictionaries(SPOT, VALUES, min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(payloads=st.lists(PAYLOAD, min_size=1, max_size=4), primary=st.booleans())
def test_plain_sets_answer_what_the_walk_answers(payloads: list[dict[tuple, Any]], primary: bool) -> None:
    for want, got in _check(payloads, primary):
        if isinstance(want, AHIError):
            assert got is None, want.message
        elif got is not None:
            assert got == want


@pytest.mark.parametrize("primary", [False, True])
def test_valid_sets_of_attributes_already_there_are_answered_without_the_walk(primary: bool) -> None:
    sets = {
        ("Study", None, None, "StudyDescription"): "ANOTHER",
        ("Instance", SERIES, SOPS[0], "InstanceNumber"): "7",
        ("Instance", SERIES, SOPS[1], "HeartRate"): "60",
        ("Instance", SERIES, SOPS[1], "Rows"): 512,
    }
    ((want, got),) = _check([sets], primary)
    assert want == got == []


def test_force_reasons_come_in_the_walks_order_and_words() -> None:
    sets = {
        ("Study", None, None, "StudyDate"): "2020-01-01",
        ("Instance", SERIES, SOPS[0], "Rows"): 70_000,
        ("Instance", SERIES, SOPS[0], "InstanceNumber"): "x" * 70,
        ("Series", SERIES, None, "SeriesNumber"): "one",
    }
    ((want, got),) = _check([sets], primary=False)
    assert len(want) == 4 and want[0].startswith("Study.DICOM.StudyDate: ")
    assert want[1].startswith(f"Study.Series.{SERIES}.DICOM.SeriesNumber: ")
    assert got == want


@pytest.mark.parametrize(
    "spot",
    [
        ("Study", None, None, "PatientAge"),  # a new attribute: the walk places it
        ("Series", "1.2.3.404", None, "Modality"),  # no such series
        ("Instance", SERIES, "1.2.3.404.1", "Rows"),  # no such instance
        ("Instance", SERIES, SOPS[0], "SOPInstanceUID"),  # a UID that keys its node
        ("Instance", SERIES, SOPS[0], "PixelData"),  # AHI-generated
    ],
)
def test_what_only_the_walk_can_tell_is_left_to_it(spot: tuple) -> None:
    ((_, got),) = _check([{spot: "1.2.3"}], primary=False)
    assert got is None


def test_a_primary_image_set_refusal_is_left_to_the_walk() -> None:
    ((want, got),) = _check([{("Series", SERIES, None, "SeriesDescription"): "renamed"}], primary=True)
    assert isinstance(want, AHIError) and got is None
    ((want, got),) = _check([{("Series", SERIES, None, "SeriesDescription"): "renamed"}], primary=False)
    assert want == got == []
