"""The `asap report` page: a self-contained HTML view of a stage-2 corpus."""
