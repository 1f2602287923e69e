"""The run manifest: what determines the bytes of a corpus run's output, recorded beside OUT.

``OUT.manifest.json`` is written when a run begins OUT. It holds the stage, the input's identity,
every option that changes output bytes (the stage supplies them: budget, mode, model identity,
prompts, ...), the shard, and the package version. A later run into the same OUT resumes only when
its manifest is equal; otherwise it stops before doing any work and names the first field that
differs with both values. Options that cannot change the bytes (workers, commit interval, quiet,
concurrency, batch sizes) are not recorded, so they may change between runs.

Identity of a file or directory (input, model, tokenizer): see asap_fast.core.fingerprint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from asap_fast.core.fingerprint import path_identity

MANIFEST_VERSION = 1


class ManifestMismatch(ValueError):
    """A run whose options differ from those that began OUT; the message is one line."""


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
