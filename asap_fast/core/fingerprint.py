"""Cheap identities of files and directories (inputs, models), for run manifests.

Identity: path, size, modification time and a content hash that stays cheap for large files
(BLAKE2b of the size, the first and the last MiB).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_EDGE = 1 << 20  # bytes hashed at each end of a large file


def file_fingerprint(path: str | os.PathLike) -> str:
    """BLAKE2b of size + first MiB + last MiB (the whole file when it is under 2 MiB)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * _EDGE:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def path_identity(path: str | os.PathLike, *, with_mtime: bool = True) -> dict:
    """Identity of a file, or of a directory as its files' names, sizes and fingerprints. Model
    directories are identified without modification times (a copied checkpoint is the same model)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.blake2b(digest_size=16)
        size = mtime = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            st = file.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
            h.update(f"{file.relative_to(path)}\0{st.st_size}\0{file_fingerprint(file)}\n".encode())
        identity = {"path": str(path.resolve()), "size": size, "hash": h.hexdigest()}
    else:
        st = path.stat()
        mtime = st.st_mtime_ns
        identity = {"path": str(path.resolve()), "size": st.st_size, "hash": file_fingerprint(path)}
    if with_mtime:
        identity["mtime_ns"] = mtime
    return identity


def model_identity(name: str) -> dict | str:
    """A local model directory by content (config, tokenizer and weight files), a hub id by name."""
    path = Path(name)
    if path.is_dir():
        identity = path_identity(path, with_mtime=False)
        identity.pop("path")  # the same checkpoint elsewhere is the same model
        return identity
    return name
