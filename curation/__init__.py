"""ahi-curation: curate DICOM metadata in AWS HealthImaging with pandas.

The workflow: ``fetch`` image-set metadata into a Snapshot of DataFrames, edit them with pandas,
``diff`` the edits into a ChangeSet, ``plan`` the UpdateImageSetMetadata requests, ``apply`` them (journaled),
``verify`` the result and ``revert`` it. ``curation.local`` is the embedded HealthImaging service.

The public functions share their names with the modules that define them (``curation.fetch`` is the
function); import a module's other names with ``from curation.<module> import ...``.
"""

from curation.apply import apply, revert, verify
from curation.changes import ChangeSet
from curation.diff import DiffError, diff, diff_documents
from curation.document import DocumentError, encode_document, parse_document, read_document
from curation.fetch import fetch
from curation.flatten import NULL, flatten, flatten_many, unflatten
from curation.history import history
from curation.plan import PlanError, UpdatePlan, plan, revert_plan
from curation.snapshot import Snapshot
from curation.update import apply_to_document
from curation.views import explode, typed

__all__ = [
    "NULL",
    "ChangeSet",
    "DiffError",
    "DocumentError",
    "PlanError",
    "Snapshot",
    "UpdatePlan",
    "apply",
    "apply_to_document",
    "diff",
    "diff_documents",
    "encode_document",
    "explode",
    "fetch",
    "flatten",
    "flatten_many",
    "history",
    "parse_document",
    "plan",
    "read_document",
    "revert",
    "revert_plan",
    "typed",
    "unflatten",
    "verify",
]
__version__ = "0.1.0"
