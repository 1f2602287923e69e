"""Corpus runs: record formats, the run engine (manifest, resume, progress, rejects), shards, the
Ray executor, and the stage compositions (`asap split`, `asap compress`)."""
