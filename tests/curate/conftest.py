"""Fixtures of the curate tests: ``clean_site``, the snapshot of the clean site export of ``check_sites`` (the
builders and one planting function per defect that ``curation.check`` must find)."""

from __future__ import annotations

import pytest
from check_sites import site_documents, snapshot_of

from curation.frames.snapshot import Snapshot


@pytest.fixture(scope="session")
def clean_site() -> Snapshot:
    """The clean site's snapshot (all primary)."""
    return snapshot_of(site_documents())
