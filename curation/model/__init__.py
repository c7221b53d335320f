"""The AHI metadata document and AHI's rules, with no pandas and no I/O but reading a file.

``document`` (reading and writing documents), ``dictionary`` (pydicom's data dictionary: VRs, VMs, keywords
and tags), ``levels`` (where AHI's normalization puts an attribute), ``values`` (a curator's value in AHI's
JSON encoding, validated by VR), ``rules`` (what needs ``force``, what a primary image set refuses),
``updates`` (what UpdateImageSetMetadata does to a document) and ``errors`` (AHI's errors).
"""
