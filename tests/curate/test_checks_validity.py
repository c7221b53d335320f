"""The shortcut of ``invalid_value``: every value that a pattern of ``CERTAINLY_VALID`` matches is one the
validator (``curation.model.validation.validate``) accepts, so skipping the validator for those is safe."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from curation.curate.checks.validity import _UI_MAX, CERTAINLY_VALID
from curation.model.validation import validate

_VR_PATTERNS = sorted(CERTAINLY_VALID.items())


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    st.sampled_from(_VR_PATTERNS).flatmap(
        lambda item: st.tuples(st.just(item[0]), st.from_regex(re.compile(item[1]), fullmatch=True))
    )
)
def test_every_value_a_certainly_valid_pattern_matches_is_valid(case: tuple[str, str]) -> None:
    vr, value = case
    if vr == "UI" and len(value) > _UI_MAX:
        return  # the check also bounds UIDs to 64 bytes
    assert validate(value, vr, "1") is None, (vr, value)
