"""ahi-curation: curate DICOM metadata in AWS HealthImaging with pandas.

The workflow: ``fetch`` image-set metadata into a Snapshot of DataFrames, edit them with pandas,
``diff`` the edits into a ChangeSet, ``plan`` the UpdateImageSetMetadata requests, ``apply`` them.
"""

from curation.document import DocumentError, encode_document, parse_document, read_document

__all__ = ["DocumentError", "encode_document", "parse_document", "read_document"]
__version__ = "0.1.0"
