"""The notebook UI: ``panel`` (CurationPanel, point-and-click curation over the same functions) and ``plots``
(completeness, value counts, timelines, slice geometry, version history).
"""
