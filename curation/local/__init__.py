"""The embedded HealthImaging service: a durable on-disk store served to real boto3 clients and the AWS CLI.

``Store`` (the backend: datastores, image sets and versions with AHI's semantics), ``client`` (a real boto3
client answered in this process), ``serving`` / ``serve`` (the same over HTTP on 127.0.0.1). Modules: ``store``
(the backend), ``ingest`` (DICOM files and JSON documents into documents), ``wire`` (HTTP <-> operations,
driven by botocore's service model), ``service`` (latency, quotas and faults around the backend),
``inprocess`` and ``server`` (the two transports).
"""

from curation.local.inprocess import client, make_service
from curation.local.server import run_server as serve
from curation.local.server import serving
from curation.local.store import Store

__all__ = ["Store", "client", "make_service", "serve", "serving"]
