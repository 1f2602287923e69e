"""Progress of a corpus run on stderr: a tqdm bar on a terminal, a plain line every few seconds in
a log (stderr piped to a file), nothing with ``quiet``.

Rates are over this invocation; the row total (for the ETA) may arrive late, from a background
count of the input, so that a huge corpus starts at once.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

LOG_EVERY_S = 10.0


class Progress:
    def __init__(self, stage: str, *, quiet: bool, done: int = 0, total: int | None = None,
                 count_total: Callable[[], int] | None = None, stream=None):
        self.stage, self.quiet = stage, quiet
        self.stream = stream or sys.stderr
        self.done_before = done  # rows a previous run committed
        self.rows = 0
        self.tokens_before = 0
        self.tokens_after = 0
        self.total = total
        self.start = self.last_log = time.monotonic()
        self.bar = None
        if quiet:
            return
        if self.total is None and count_total is not None:
            threading.Thread(target=self._count, args=(count_total,), daemon=True).start()
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=done, desc=f"asap {stage}", unit="row",
                            file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def _count(self, count_total) -> None:
        try:
            self.total = count_total()
        except Exception:  # the count is a nicety: a bad input is reported by the run itself
            return

    def update(self, rows: int, tokens_before: int = 0, tokens_after: int = 0) -> None:
        """``rows`` more rows finished (written or rejected); their trace tokens before / after."""
        self.rows += rows
        self.tokens_before += tokens_before
        self.tokens_after += tokens_after
        if self.quiet:
            return
        if self.bar is not None:
            if self.total is not None and self.bar.total != self.total:
                self.bar.total = self.total
            self.bar.set_postfix_str(self._rates(time.monotonic()), refresh=False)
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            print(self.line(now), file=self.stream, flush=True)

    def _rates(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        parts = [f"{self.rows / elapsed:.2f} rows/s"]
        if self.tokens_before:
            parts.append(f"{self.tokens_before / elapsed:,.0f} trace tokens/s")
        return ", ".join(parts)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        done = self.done_before + self.rows
        total = f"/{self.total:,}" if self.total is not None else ""
        parts = [f"{done:,}{total} rows", self._rates(now)]
        if self.total is not None and self.rows:
            left = max(0, self.total - done) * (now - self.start) / self.rows
            parts.append(f"ETA {duration(left)}")
        return f"asap {self.stage}: " + ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
