"""The event protocol, parent side: where a sample's bytes become Python data in the trusted,
unsandboxed parent. Everything on the events pipe is written by code the sample shares a process
with, so it is hostile input, and this is the one place it is decoded.

What one event may cost the parent is bounded before any of it is decoded:

- a line (one event) is at most ``SandboxLimits.events_line_bytes`` (default 4 MiB);
- it holds at most ``EVENT_VALUES_MAX`` JSON values and nests at most ``EVENT_DEPTH_MAX`` deep,
  counted on the raw bytes before ``json.loads`` sees them (a decoded ``{}`` costs 72 bytes for 3
  bytes of JSON: 100,000 values are about 7 MiB; depth 100 keeps the C decoder, and the judge's
  recursive ``decode``, far from Python's recursion limit);
- every check and the decode itself are short C calls or a Python loop stopped at the bound, so
  no sample holds the GIL (which every other sample's reader and deadline need) for longer than
  one bounded decode (see docs/evaluation.md for the measured figure).

A line past the size or value bound is a flood (the run is cut, the sample fails as an error); a
line nested too deep is the sample's malformed output (the run is cut, the sample fails). A line
that is not JSON or not an object is ignored, as before: it decides nothing.
"""

from __future__ import annotations

import json
import re

__all__ = ["EVENT_DEPTH_MAX", "EVENT_VALUES_MAX", "EventFlood", "EventReader", "MalformedEvent"]

EVENT_VALUES_MAX = 100_000
EVENT_DEPTH_MAX = 100

# A JSON string (its commas and brackets are text, not structure), or one structural byte.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')
_OPEN, _CLOSE, _QUOTE = frozenset(b"[{"), frozenset(b"]}"), ord('"')


class MalformedEvent(ValueError):
    """The sample wrote an event the protocol cannot accept (its own malformed output)."""


class EventFlood(ValueError):
    """The sample wrote more than the parent keeps for it (an event too long or too large)."""


def check_event_shape(raw: bytes, values_max: int = EVENT_VALUES_MAX, depth_max: int = EVENT_DEPTH_MAX) -> None:
    """Raise MalformedEvent if ``raw`` nests deeper than ``depth_max``, EventFlood if it holds more
    than ``values_max`` values; counted on the bytes, without decoding them."""
    opens = raw.count(b"[") + raw.count(b"{")
    separators = raw.count(b",") + raw.count(b":")
    # Fast path: counting brackets and separators inside strings too only overestimates.
    if opens <= depth_max and opens + separators < values_max:
        return
    depth = values = 0
    for token in _TOKEN.finditer(raw):
        first = raw[token.start()]
        if first == _QUOTE:
            continue
        if first in _OPEN:
            depth += 1
            if depth > depth_max:
                raise MalformedEvent(f"an event nested deeper than {depth_max} levels")
        elif first in _CLOSE:
            depth -= 1
            continue
        values += 1
        if values >= values_max:
            raise EventFlood(f"an event of more than {values_max} JSON values")


class EventReader:
    """Splits the events pipe into lines and decodes each within the bounds above.

    ``feed(chunk)`` returns the decoded events (dicts) that the chunk completed; it raises
    EventFlood / MalformedEvent when the sample went past a bound (the caller ends the run)."""

    def __init__(self, line_bytes: int, total_bytes: int):
        self.line_bytes, self.total_bytes = line_bytes, total_bytes
        self.read_bytes = 0
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[dict, int]]:
        """The events completed by ``chunk``, each with the length of its line."""
        self.read_bytes += len(chunk)
        if self.read_bytes > self.total_bytes:
            raise EventFlood(f"more than {self.total_bytes} bytes of events")
        events = []
        start = 0
        while True:
            # Search the new chunk only: a long line is never rescanned as it grows.
            cut = chunk.find(b"\n", start)
            if cut < 0:
                self.pending += chunk[start:]
                if len(self.pending) > self.line_bytes:
                    raise EventFlood(f"an event longer than {self.line_bytes} bytes")
                return events
            if len(self.pending) + cut - start > self.line_bytes:
                raise EventFlood(f"an event longer than {self.line_bytes} bytes")
            if self.pending:
                self.pending += chunk[start:cut]
                raw, self.pending = bytes(self.pending), bytearray()  # frees the grown buffer
            else:
                raw = chunk[start:cut]
            start = cut + 1
            event = decode_event(raw)
            if event is not None:
                events.append((event, len(raw)))


def decode_event(raw: bytes) -> dict | None:
    """One line as an event (a dict), None when it is not one; bounded as the module says."""
    check_event_shape(raw)
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or an integer past Python's digit limit
        return None
    return event if isinstance(event, dict) else None


def kept_copy(event: dict, text_chars: int = 2000) -> tuple[dict, int]:
    """What is kept of an event once a judge has seen it: its scalar fields, text cut to
    ``text_chars`` (nothing downstream reads more of a judged event), and its cost in bytes."""
    kept, cost = {}, 512
    for key, value in event.items():
        if key == "out" or not isinstance(key, str):
            continue
        if isinstance(value, str):
            value = value[:text_chars]
            cost += len(value)
        elif not (value is None or isinstance(value, (bool, int, float))):
            continue
        kept[key[:text_chars]] = value
        cost += len(key[:text_chars])
    return kept, cost
