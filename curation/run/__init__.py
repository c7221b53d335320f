"""Everything that holds a client: ``fetching`` (search and GetImageSetMetadata into a Snapshot),
``applying`` (an UpdatePlan applied once, journaled, verified and reverted), ``journal`` (the crash-proof
record of an apply), ``history`` (versions of an image set) and ``retries`` (rate limiting and retries).
"""
