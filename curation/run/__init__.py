"""Everything that holds a client: ``fetching`` (search and GetImageSetMetadata into a Snapshot), ``applying``
(an UpdatePlan applied once, journaled: the run loop), ``steps`` (one request: send, reconcile, journal),
``servicecalls`` (the calls of a run), ``verifying`` and ``reverting``, ``journal`` (the crash-proof record of a
run, its lock and its chains of versions), ``history`` (versions of an image set), ``limits`` (adaptive
per-action limiters on ``curation.model.quotas``, the account's quotas), ``retries`` (the one retry policy),
``options`` and ``results`` (what a run takes and returns), ``clients`` (the clients we make).
"""
