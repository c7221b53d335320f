"""The embedded HealthImaging service: a durable on-disk store served to real boto3 clients and the AWS CLI.

``Store`` (the backend: datastores, image sets and versions with AHI's semantics), ``client`` (a real boto3
client answered in this process), ``serving`` / ``serve`` (the same over HTTP, SigV4-authenticated).

The backend, in moto's backend/responses split: ``store`` composes ``datastores``, ``imagesets``,
``updating``, ``copying`` and ``importing`` (one plain keyword method per operation) over ``database``
(SQLite persistence and the one writer of versions), with ``search`` (filters and paging tokens),
``indexing`` (what search reads), ``faults`` (injected update failures), ``ingest`` and ``encoding`` (DICOM
files into documents; frames as AHI stores them). The responses side: ``validate`` and ``wire`` (HTTP <->
operations, driven by botocore's service model), ``service`` (latency, quotas and faults around the backend),
and the two transports ``inprocess`` and ``server`` (with ``auth``, SigV4, and ``limits``).
"""

from curation.local.inprocess import client, make_service
from curation.local.server import run_server as serve
from curation.local.server import serving
from curation.local.store import Store

__all__ = ["Store", "client", "make_service", "serve", "serving"]
