"""curation.model.values: coercion of outgoing values to AHI's encoding, and their validation by VR/VM."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.valuerep import PersonName

from curation.frames.flattening import NULL
from curation.model.values import CoercionError, check, coerce, is_absent, same_value, validate, vm_of, vr_vm_of

UTC_MINUS_5 = dt.timezone(dt.timedelta(hours=-5))


@pytest.mark.parametrize(
    ("value", "vr", "vm", "expected"),
    [
        (dt.date(2020, 1, 2), "DA", "1", "20200102"),
        (dt.datetime(2020, 1, 2, 3, 4, 5), "DA", "1", "20200102"),
        (pd.Timestamp("2020-01-02 10:00"), "DA", "1", "20200102"),
        (np.datetime64("2020-01-02"), "DA", "1", "20200102"),
        ("2020-01-02", "DA", "1", "2020-01-02"),  # a str is never changed (validate reports it)
        (dt.time(1, 2, 3), "TM", "1", "010203"),
        (dt.time(1, 2, 3, 500), "TM", "1", "010203.000500"),
        (pd.Timestamp("2020-01-02 03:04:05.25"), "TM", "1", "030405.250000"),
        (dt.datetime(2020, 1, 2, 3, 4, 5), "DT", "1", "20200102030405"),
        (dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC_MINUS_5), "DT", "1", "20200102030405-0500"),
        (dt.date(2020, 1, 2), "DT", "1", "20200102"),
        (97, "DS", "1", "97"),
        (97.0, "DS", "1", "97"),
        (2.5, "DS", "1", "2.5"),
        (1 / 3, "DS", "1", "0.33333333333333"),
        (Decimal("1.25"), "DS", "1", "1.25"),
        (np.float32(0.5), "DS", "1", "0.5"),
        ("120 ", "DS", "1", "120 "),
        (7, "IS", "1", "7"),
        (np.int64(-3), "IS", "1", "-3"),
        (8.0, "IS", "1", "8"),
        (512.0, "US", "1", 512),
        (np.uint16(512), "US", "1", 512),
        (-5, "SS", "1", -5),
        (np.float64(1.5), "FD", "1", 1.5),
        (Decimal("0.5"), "FL", "1", 0.5),
        (3, "FD", "1", 3),
        (PersonName("DOE^JOHN"), "PN", "1", "DOE^JOHN"),
        ("DOE^JOHN", "PN", "1", "DOE^JOHN"),
        (0x00100010, "AT", "1", "00100010"),
        (b"\x01\x00", "OB", "1", "AQA="),
        (bytearray(b"0 "), "UN", "1", "MCA="),
        ("AQA=", "OB", "1", "AQA="),
        ("ORIGINAL", "CS", "2-n", ["ORIGINAL"]),
        ("ORIGINAL\\PRIMARY", "CS", "2-n", ["ORIGINAL", "PRIMARY"]),
        (("A", "B"), "CS", "2-n", ["A", "B"]),
        (40, "DS", "1-n", ["40"]),
        (np.array([1.0, 2.5]), "DS", "2", ["1", "2.5"]),
        (pd.Series([1, 2]), "US", "1-n", [1, 2]),
        (["A", None], "CS", "1-n", ["A", None]),
        ({"CodeValue": "1", "CodeMeaning": "x"}, "SQ", "1", [{"CodeValue": "1", "CodeMeaning": "x"}]),
        ([{"ReferencedFrameNumber": 3}], "SQ", "1", [{"ReferencedFrameNumber": ["3"]}]),
        (
            [{"StudyDate": dt.date(2021, 5, 6), "CodeValue": None}],
            "SQ",
            "1",
            [{"StudyDate": "20210506", "CodeValue": None}],
        ),
        (NULL, "LO", "1", NULL),
        (None, "LO", "1", None),
        (np.nan, "DS", "1", None),
        (pd.NA, "CS", "1", None),
        ("x", None, None, "x"),
        (np.int32(4), None, None, 4),
        (5, "US or SS", "1", 5),
        (b"\x00\x01", "OB or OW", "1", "AAE="),
    ],
)
def test_coercion_table(value, vr, vm, expected):
    got = coerce(value, vr, vm)
    assert got == expected if expected is not NULL else got is NULL
    assert type(got) is type(expected)
    if isinstance(expected, list):
        assert [type(x) for x in got] == [type(x) for x in expected]


@pytest.mark.parametrize(
    ("value", "vr", "vm", "fragment"),
    [
        (1.5, "IS", "1", "integer"),
        (float("inf"), "DS", "1", "finite"),
        (True, "US", "1", "boolean"),
        (1.5, "US", "1", "integer"),
        (10**13, "IS", "1", "12 characters"),
        ({1, 2}, "LO", "1", "JSON"),
        ([1, "a"], "SQ", "1", "objects"),
        (object(), None, None, "JSON"),
    ],
)
def test_values_that_cannot_be_encoded_raise_coercion_error(value, vr, vm, fragment):
    with pytest.raises(CoercionError, match=fragment):
        coerce(value, vr, vm)
    assert fragment in check(value, vr, vm)[1]


@pytest.mark.parametrize(
    ("value", "vr", "vm", "fragment"),
    [
        ("2020-01-02", "DA", "1", "DA"),
        ("251010", "TM", "1", "TM"),
        ("1.234567890123456789", "DS", "1", "16"),
        ("lower case", "CS", "1", "CS"),
        (70000, "US", "1", "65535"),
        ("text", "US", "1", "integer"),
        (5, "LO", "1", "string"),
        (["A"], "CS", "2-n", "VM 2-n"),
        (["A", "B"], "CS", "1", "single-valued"),
        ("A", "CS", "2-n", "multi-valued"),
        ("not base64!", "OB", "1", "base64"),
        ("1.2.a", "UI", "1", "UI"),
        ([{"StudyDate": "bad"}], "SQ", "1", "item 0: StudyDate"),
        ([{"NotAKeyword": "x"}], "SQ", "1", "not a DICOM keyword"),
        (float("nan"), "FD", "1", "finite"),
    ],
)
def test_validation_problems(value, vr, vm, fragment):
    problem = validate(value, vr, vm)
    assert problem is not None and fragment in problem


def test_valid_values_have_no_problem():
    assert validate("20200102", "DA", "1") is None
    assert validate(["ORIGINAL", "PRIMARY", "", "0015"], "CS", "2-n") is None
    assert validate(NULL, "DA", "1") is None
    assert validate(["40", None], "DS", "1-n") is None
    assert validate("anything", None) is None


def test_dictionary_lookups():
    assert vr_vm_of("ImageType") == ("CS", "2-n")
    assert vr_vm_of("7FDF1001") == (None, None)
    assert vr_vm_of("7FDF1001", {"7FDF1001": "UN"}) == ("UN", None)
    assert vm_of("WindowCenter") == "1-n" and vm_of("PatientName") == "1"
    assert vm_of("NoSuchKeyword") is None


def test_absent_and_equality():
    assert all(is_absent(v) for v in (None, np.nan, pd.NA, pd.NaT, np.datetime64("NaT")))
    assert not any(is_absent(v) for v in (NULL, "", 0, [], np.float64(1)))
    assert same_value(["A", "B"], ["A", "B"]) and same_value(1, 1.0) and same_value(NULL, NULL)
    assert not same_value(NULL, None) and not same_value(True, 1) and not same_value(["A"], "A")
    assert not same_value({"a": 1}, {"a": 1, "b": None})


# --- properties --------------------------------------------------------------------------------------------

_CS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _", max_size=16)
_DATES = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2999, 12, 31))
_TIMES = st.times()
_FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        _DATES.map(lambda v: (v, "DA", "1")),
        st.datetimes(min_value=dt.datetime(1900, 1, 1)).map(lambda v: (v, "DA", "1")),
        _TIMES.map(lambda v: (v, "TM", "1")),
        st.datetimes(min_value=dt.datetime(1900, 1, 1)).map(lambda v: (v, "DT", "1")),
        _FINITE.map(lambda v: (v, "DS", "1")),
        st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**9), max_value=10**9).map(
            lambda v: (v, "DS", "1")
        ),
        st.integers(-(2**31), 2**31 - 1).map(lambda v: (v, "IS", "1")),
        st.integers(0, 65535).map(lambda v: (v, "US", "1")),
        st.integers(-(2**31), 2**31 - 1).map(lambda v: (np.int64(v), "SL", "1")),
        _FINITE.map(lambda v: (v, "FD", "1")),
        st.binary(max_size=64).map(lambda v: (v, "OB", "1")),
        st.lists(_CS, min_size=2, max_size=5).map(lambda v: (v, "CS", "2-n")),
        st.lists(_FINITE, min_size=1, max_size=4).map(lambda v: (v, "DS", "1-n")),
        _CS.map(lambda v: (v, "CS", "1-n")),
    )
)
def test_valid_inputs_coerce_to_valid_values(case):
    value, vr, vm = case
    coerced, problem = check(value, vr, vm)
    assert problem is None, (value, vr, vm, coerced, problem)
    assert coerce(coerced, vr, vm) == coerced  # coercion is idempotent on its own output


_ANY = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=8),
        _DATES,
        _TIMES,
        st.decimals(),
        st.just(NULL),
        st.just(pd.NA),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3), st.tuples(inner, inner)
    ),
    max_leaves=8,
)
_VRS = st.sampled_from(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "TM",
        "UI",
        "UL",
        "UN",
        "US",
        "UT",
        "US or SS",
        None,
    ]
)


@settings(max_examples=300, deadline=None)
@given(_ANY, _VRS, st.sampled_from(["1", "2", "1-n", "2-n", "3", None]))
def test_any_input_gives_a_value_or_a_problem_never_an_exception(value, vr, vm):
    coerced, problem = check(value, vr, vm)
    assert problem is None or isinstance(problem, str)
    if problem is None and coerced is not None and coerced is not NULL:
        assert validate(coerced, vr, vm) is None
