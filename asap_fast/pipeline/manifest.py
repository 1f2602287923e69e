"""The run manifest: what determines the bytes of a corpus run's output, recorded beside OUT.

``OUT.manifest.json`` is written when a run begins OUT. It holds the stage, the input's identity,
every option that changes output bytes (the stage supplies them: budget, mode, model identity,
prompts, ...), the shard, and the package version. A later run into the same OUT resumes only when
its manifest is equal; otherwise it stops before doing any work and names the first field that
differs with both values. Options that cannot change the bytes (workers, commit interval, quiet,
concurrency, batch sizes) are not recorded, so they may change between runs.

Identity of a file or directory (input, model, tokenizer): path, size, modification time and a
content hash that stays cheap for large files (BLAKE2b of the size, the first and the last MiB).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_VERSION = 1
_EDGE = 1 << 20  # bytes hashed at each end of a large file


class ManifestMismatch(ValueError):
    """A run whose options differ from those that began OUT; the message is one line."""


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


def build_manifest(stage: str, input: str | os.PathLike, options: dict, shard=None) -> dict:
    from asap_fast import __version__

    return {
        "manifest": MANIFEST_VERSION,
        "asap_fast": __version__,
        "stage": stage,
        "input": path_identity(input),
        "shard": list(shard) if shard is not None else None,
        "options": options,
    }


def first_difference(old, new, prefix: str = "") -> tuple[str, object, object] | None:
    """(dotted field, old value, new value) of the first difference, in the recorded order."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return (prefix + key, old.get(key, "<absent>"), new.get(key, "<absent>"))
            found = first_difference(old[key], new[key], prefix + key + ".")
            if found:
                return found
        return None
    return None if old == new else (prefix.rstrip("."), old, new)


def check_same(recorded: dict, current: dict, out: Path) -> None:
    found = first_difference(recorded, current)
    if found is None:
        return
    field, old, new = found
    raise ManifestMismatch(
        f"{out} was begun with {field} = {_show(old)}, this run has {_show(new)}; run with the same "
        f"input and options to resume, or pass --overwrite to start {out.name} afresh"
    )


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ManifestMismatch(f"{path} is unreadable ({e}); pass --overwrite to start afresh") from None
