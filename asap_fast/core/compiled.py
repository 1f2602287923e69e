"""The compiled C++ core (``asap_fast._core``), imported once, with an error that says what to do
when it is missing: the usual cause is running Python inside the source checkout, whose
``asap_fast/`` (never built in place) shadows the installed package."""

from __future__ import annotations

from pathlib import Path

try:
    import asap_fast._core as core
except ModuleNotFoundError as error:
    if error.name != "asap_fast._core":
        raise
    package = Path(__file__).resolve().parents[1]
    raise ModuleNotFoundError(
        f"asap_fast._core (the compiled C++ core) is not in {package}: this is the source tree, not an "
        "installed package. Run Python from another directory (the checkout's asap_fast/ shadows the "
        "installed one), or install in place with `pip install -e .`",
        name="asap_fast._core",
    ) from None

__all__ = ["core"]
