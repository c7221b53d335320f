"""Consistency checks of a snapshot and the edits that fix what they find.

``checking`` (``check``: the registry of checks and the table of them), ``findings`` (the findings table and its
stable ids), ``context`` (what checks read, and values compared as PS3.5 compares them), one module per family
of checks (``consistency``, ``duplicates``, ``validity`` with ``sequences``, ``completeness``, ``slices``), and
``fixes`` (``fix``: findings -> edited frames for ``diff``). The slice geometry itself is
``curation.frames.geometry``, shared with ``curation.ui.plots.slice_geometry``.
"""
