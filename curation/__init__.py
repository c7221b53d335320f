"""ahi-curation: curate DICOM metadata in AWS HealthImaging with pandas.

The workflow, one subpackage per stage:

- ``curation.model``: the AHI metadata document and AHI's rules (levels, VRs, values, what an update does);
- ``curation.frames``: documents <-> DataFrames (``flatten``, ``Snapshot``, typed views);
- ``curation.curate``: edited frames -> ``ChangeSet`` (``diff``) -> ``UpdatePlan`` (``plan``); ``check`` finds
  what to fix and ``fix`` turns its findings into edited frames; ``deidentify`` (PS3.15 Annex E as edited
  frames);
- ``curation.run``: everything that holds a client (``fetch``, ``apply``, ``verify``, ``revert``, ``history``);
- ``curation.local``: the embedded HealthImaging service (``Store``, ``client``, ``serving``);
- ``curation.ui``: the notebook panel and plots; ``curation.scale``: the same workflow on Dask.

The names below are the public API; each is defined in the module its docstring names.
"""

from curation.curate.changeset import ChangeSet
from curation.curate.checks.checking import check
from curation.curate.checks.fixes import FixError, fix
from curation.curate.confidentiality import DeidOption
from curation.curate.deidentification import Deidentification, deidentify
from curation.curate.differ import DiffError, diff, diff_documents
from curation.curate.planner import plan, revert_plan
from curation.curate.pseudonyms import DateShift, new_secret
from curation.curate.updateplan import PlanError, UpdatePlan
from curation.frames.cells import REMOVE
from curation.frames.exchange import read_csv, read_parquet, to_csv, to_parquet
from curation.frames.flattening import NULL, flatten, flatten_many, unflatten
from curation.frames.snapshot import Snapshot
from curation.frames.views import adopt_study, explode, typed
from curation.model.document import DocumentError, encode_document, parse_document, read_document
from curation.model.updates import apply_to_document
from curation.run.applying import apply
from curation.run.cleanup import cleanup_plan
from curation.run.fetching import fetch
from curation.run.history import history, version_diff
from curation.run.mapping import IdMapping, id_mapping, rekey
from curation.run.researchcopies import research_copies
from curation.run.reverting import revert
from curation.run.verifying import verify

__all__ = [
    "NULL",
    "REMOVE",
    "ChangeSet",
    "DateShift",
    "DeidOption",
    "Deidentification",
    "DiffError",
    "DocumentError",
    "FixError",
    "IdMapping",
    "PlanError",
    "Snapshot",
    "UpdatePlan",
    "adopt_study",
    "apply",
    "apply_to_document",
    "check",
    "cleanup_plan",
    "deidentify",
    "diff",
    "diff_documents",
    "encode_document",
    "explode",
    "fetch",
    "fix",
    "flatten",
    "flatten_many",
    "history",
    "id_mapping",
    "new_secret",
    "parse_document",
    "plan",
    "read_csv",
    "read_document",
    "read_parquet",
    "rekey",
    "research_copies",
    "revert",
    "revert_plan",
    "to_csv",
    "to_parquet",
    "typed",
    "unflatten",
    "verify",
    "version_diff",
]
__version__ = "0.1.0"
