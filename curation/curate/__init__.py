"""From edited frames to requests: ``differ`` (frames -> ChangeSet), ``changeset`` (the tidy table of
changes), ``planner`` (ChangeSet -> UpdatePlan) and ``updateplan`` (the plan as data, saved and displayed).
Nothing here holds a client.
"""
