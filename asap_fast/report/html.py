"""`asap report`: one self-contained HTML page about a stage-2 corpus.

The page holds corpus statistics (rows, tokens before / after, compression, steps kept), three
inline-SVG plots (per-trace compression ratio, tokens before vs after, step surprisal of kept vs
pruned steps) and, for the first ``max_traces`` rows, every step of the thinking coloured by its
first-token surprisal, with the pruned steps struck through. Nothing is fetched when the page is
viewed: CSS and SVG are inline, there is no JavaScript.

Rows are streamed once with bounded memory (a 1M-row corpus is fine): statistics are running sums,
histograms have fixed bins, the scatter plot shows a fixed-size uniform sample of the rows, and the
rendered traces go to a temporary file that is copied in after the statistics. Rows without the
stage-2 fields (or whose steps cannot be rebuilt) are counted and skipped, never a crash.
"""

from __future__ import annotations

import html
import math
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.core.traces import TraceError, parse_trace, split_steps
from asap_fast.pipeline.records import check_input, read_rows

STAGE2_FIELDS = ("step_surprisal", "kept_steps", "tokens_before", "tokens_after")

# first-token surprisal colour scale (nats): one class per 1-nat bin, the last open-ended
SCALE_STEP = 1.0
SCALE_BINS = 10  # [0,1) [1,2) ... [9, inf)
# step-surprisal histogram: fine fixed bins accumulated, merged for display
SURPRISAL_BIN = 0.25
SURPRISAL_MAX = 40.0
# compression-ratio histogram: [0, 0.05) ... [0.95, 1.0], then > 1
RATIO_BINS = 20
SCATTER_SAMPLE = 2000

KEPT_COLOR = "#2b8cbe"
PRUNED_COLOR = "#e34a33"


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(x: float, digits: int = 2) -> str:
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def _lerp_color(stops: list[tuple[int, int, int]], t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


# light (predictable, pruned first) -> dark red (surprising, kept); light enough for dark text
_SCALE_STOPS = [(247, 251, 255), (198, 219, 239), (255, 237, 160), (254, 178, 76), (240, 59, 32)]
SCALE_COLORS = [_lerp_color(_SCALE_STOPS, i / (SCALE_BINS - 1)) for i in range(SCALE_BINS)]


def scale_class(s: float | None) -> str:
    """CSS class of a surprisal value on the colour scale (``sN``, or ``sinf`` for null/inf/NaN)."""
    if s is None or not math.isfinite(s):
        return "sinf"
    return f"s{min(max(int(s // SCALE_STEP), 0), SCALE_BINS - 1)}"


def _as_float(s) -> float | None:
    if s is None:
        return None
    try:
        value = float(s)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------- stats


@dataclass
class Stats:
    """Running corpus statistics over the rows that carry the stage-2 fields."""

    rows_read: int = 0
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    tokens_before: int = 0
    tokens_after: int = 0
    ratio_sum: float = 0.0
    ratio_rows: int = 0
    unchanged: int = 0
    steps_total: int = 0
    steps_kept: int = 0
    coarse_rows: int = 0
    surprisal_none: Counter = field(default_factory=Counter)  # kept/pruned -> steps with null/inf
    surprisal_sum: Counter = field(default_factory=Counter)
    surprisal_n: Counter = field(default_factory=Counter)
    ratio_hist: list = field(default_factory=lambda: [0] * (RATIO_BINS + 1))
    surprisal_hist: dict = field(default_factory=lambda: {
        k: [0] * (int(SURPRISAL_MAX / SURPRISAL_BIN) + 1) for k in ("kept", "pruned")})
    sample: list = field(default_factory=list)  # (before, after) reservoir sample
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def add(self, before: int, after: int, surprisal: list, kept: set[int], coarse: bool) -> None:
        self.rows += 1
        self.tokens_before += before
        self.tokens_after += after
        self.coarse_rows += coarse
        if before > 0:
            ratio = after / before
            self.ratio_sum += ratio
            self.ratio_rows += 1
            b = RATIO_BINS if ratio > 1.0 else min(int(ratio * RATIO_BINS), RATIO_BINS - 1)
            self.ratio_hist[b] += 1
        self.unchanged += len(kept) == len(surprisal)
        self.steps_total += len(surprisal)
        self.steps_kept += len(kept)
        for i, s in enumerate(surprisal):
            key = "kept" if i in kept else "pruned"
            value = _as_float(s)
            if value is None:
                self.surprisal_none[key] += 1
                continue
            self.surprisal_sum[key] += value
            self.surprisal_n[key] += 1
            hist = self.surprisal_hist[key]
            hist[min(max(int(value / SURPRISAL_BIN), 0), len(hist) - 1)] += 1
        # reservoir sample (algorithm R) of the (before, after) pairs for the scatter plot
        if len(self.sample) < SCATTER_SAMPLE:
            self.sample.append((before, after))
        else:
            j = self._rng.randrange(self.rows)
            if j < SCATTER_SAMPLE:
                self.sample[j] = (before, after)

    def summary(self) -> dict:
        """The headline numbers, as shown on the page (``data-stat`` keys)."""
        r = self.rows
        out = {
            "rows_read": self.rows_read,
            "rows": r,
            "rows_skipped": sum(self.skipped.values()),
            "tokens_before_total": self.tokens_before,
            "tokens_after_total": self.tokens_after,
            "tokens_before_mean": self.tokens_before / r if r else 0.0,
            "tokens_after_mean": self.tokens_after / r if r else 0.0,
            "compression_ratio": self.tokens_after / self.tokens_before if self.tokens_before else 0.0,
            "mean_trace_ratio": self.ratio_sum / self.ratio_rows if self.ratio_rows else 0.0,
            "steps_total": self.steps_total,
            "steps_kept": self.steps_kept,
            "steps_pruned": self.steps_total - self.steps_kept,
            "steps_kept_fraction": self.steps_kept / self.steps_total if self.steps_total else 0.0,
            "rows_unchanged": self.unchanged,
            "rows_coarse": self.coarse_rows,
        }
        for key in ("kept", "pruned"):
            n = self.surprisal_n[key]
            out[f"surprisal_mean_{key}"] = self.surprisal_sum[key] / n if n else 0.0
        return out


# ---------------------------------------------------------------------------------- one trace


@dataclass
class TraceView:
    """What the page needs of one row, or why it cannot be shown."""

    steps: list[str]
    surprisal: list[float | None]
    kept: set[int]
    before: int
    after: int
    coarse: bool


def trace_view(record: dict) -> TraceView | str:
    """The row's steps and stage-2 results, or a one-line reason to skip it."""
    missing = [f for f in STAGE2_FIELDS if record.get(f) is None]
    if missing:
        return "no stage-2 fields (" + ", ".join(missing) + ")"
    surprisal, kept = record["step_surprisal"], record["kept_steps"]
    before, after = record["tokens_before"], record["tokens_after"]
    if not isinstance(surprisal, list) or not isinstance(kept, list):
        return "step_surprisal and kept_steps must be lists"
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in kept):
        return "kept_steps must be integers"
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (before, after)):
        return "tokens_before and tokens_after must be numbers"
    if any(not (0 <= k < len(surprisal)) for k in kept):
        return "kept_steps out of range of step_surprisal"
    # the steps stage 2 scored: coarse_think when present, else the generation's thinking; when the
    # stage was forced to the other one (--think-field), the one whose step count matches is used
    candidates = []
    if isinstance(record.get("coarse_think"), str):
        candidates.append((split_steps(record["coarse_think"]), True))
    if isinstance(record.get("generation"), str):
        try:
            candidates.append((split_steps(parse_trace(record["generation"], require_code=False).think), False))
        except TraceError:
            pass
    if not candidates:
        return "no generation or coarse_think to rebuild the steps from"
    matching = [c for c in candidates if len(c[0]) == len(surprisal)]
    if not matching:
        return "step count differs from step_surprisal"
    pruned_think = record.get("pruned_think")
    if isinstance(pruned_think, str) and len(matching) > 1:
        # stage 2 writes kept steps as their original paragraphs: compare them as steps
        written = split_steps(pruned_think)
        exact = [c for c in matching if [c[0][k] for k in kept] == written]
        matching = exact or matching
    steps, coarse = matching[0]
    return TraceView(steps, [_as_float(s) for s in surprisal], set(kept), int(before), int(after), coarse)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" if isinstance(m, dict) else str(m)
                           for m in prompt)
    return "" if prompt is None else str(prompt)


def render_trace(number: int, anchor: str, record: dict, view: TraceView) -> str:
    """The <section> of one trace."""
    ident = record.get("id", f"row {number}")
    ratio = view.after / view.before if view.before else 0.0
    kept_s = [s for i, s in enumerate(view.surprisal) if i in view.kept and s is not None]
    pruned_s = [s for i, s in enumerate(view.surprisal) if i not in view.kept and s is not None]
    n_pruned = len(view.steps) - len(view.kept)
    facts = [
        f"tokens {view.before:,} &rarr; {view.after:,} (&times;{ratio:.2f})",
        f"steps kept {len(view.kept)} / {len(view.steps)}",
    ]
    if pruned_s:
        facts.append(f"pruned steps: surprisal &le; {max(pruned_s):.2f}")
    if kept_s:
        facts.append(f"kept steps: surprisal &ge; {min(kept_s):.2f}")
    if view.coarse:
        facts.append("steps of the stage-1b coarse thinking")
    if isinstance(record.get("kind"), str):
        facts.insert(0, _esc(record["kind"]))
    parts = [
        (f'<section class="trace" id="{_esc(anchor)}" data-steps="{len(view.steps)}" '
         f'data-pruned="{n_pruned}">'),
        f'<h3>{number}. {_esc(ident)} <a class="top" href="#toc" title="back to the contents">&uarr;</a></h3>',
        '<p class="facts">' + " &middot; ".join(facts) + "</p>",
        (f'<details class="prompt"><summary>prompt</summary><pre>{_esc(_prompt_text(record.get("prompt")))}</pre>'
         "</details>"),
        '<div class="steps">',
    ]
    for i, (step, s) in enumerate(zip(view.steps, view.surprisal)):
        kept = i in view.kept
        value = "&infin;" if s is None else f"{s:.2f}"
        title = (f"step {i}: first-token surprisal "
                 + ("null/inf (nothing precedes it)" if s is None else f"{s:.3f} nats")
                 + (" \u00b7 kept" if kept else " \u00b7 pruned"))
        tag = "span" if kept else "del"
        parts.append(
            f'<div class="step {scale_class(s)}{"" if kept else " pruned"}" data-step="{i}" '
            f'title="{_esc(title)}"><span class="sv">{value}</span><{tag} class="text">{_esc(step)}</{tag}></div>'
        )
    parts.append("</div></section>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------- plots


def _nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = max((hi - lo) / n, 1.0) if integer else (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step  # the last tick covers hi
    ticks, t = [], start
    while t <= end + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    if abs(v) >= 10000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


W, H = 350, 240
ML, MR, MT, MB = 50, 22, 40, 40


def _axes(title: str, xlabel: str, ylabel: str, x0, x1, y0, y1, xticks=None, xlabels=None) -> list[str]:
    pw, ph = W - ML - MR, H - MT - MB

    def sx(v):
        return ML + (v - x0) / (x1 - x0) * pw

    def sy(v):
        return MT + ph - (v - y0) / (y1 - y0) * ph

    out = [f'<text x="{W / 2}" y="16" class="pt">{_esc(title)}</text>']
    for t in _nice_ticks(y0, y1, integer=True):
        y = sy(t)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ML - 5}" y="{y + 4:.1f}" class="yl">{_tick_label(t)}</text>')
    for t, label in zip(xticks if xticks is not None else _nice_ticks(x0, x1),
                        xlabels if xlabels is not None else [None] * 1000):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MT + ph}" y2="{MT + ph + 4}" class="ax"/>')
        out.append(f'<text x="{x:.1f}" y="{MT + ph + 16}" class="xl">{_esc(label or _tick_label(t))}</text>')
    out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{MT + ph}" y2="{MT + ph}" class="ax"/>')
    out.append(f'<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{MT + ph}" class="ax"/>')
    out.append(f'<text x="{ML + pw / 2}" y="{H - 6}" class="al">{_esc(xlabel)}</text>')
    out.append(f'<text transform="translate(13,{MT + ph / 2}) rotate(-90)" class="al">{_esc(ylabel)}</text>')
    return out


def _svg(body: list[str], label: str) -> str:
    return (f'<svg class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{_esc(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>")


def _empty_plot(title: str) -> str:
    return _svg([f'<text x="{W / 2}" y="16" class="pt">{_esc(title)}</text>',
                 f'<text x="{W / 2}" y="{H / 2}" class="al">no data</text>'], title)


def ratio_histogram(stats: Stats) -> str:
    title = "compression ratio per trace"
    counts = stats.ratio_hist
    if not any(counts):
        return _empty_plot(title)
    over = counts[RATIO_BINS]
    n_bins = RATIO_BINS + (1 if over else 0)
    y1 = max(_nice_ticks(0, max(counts), integer=True)[-1], 1)
    body = _axes(title, "compression ratio", "traces", 0, n_bins, 0, y1,
                 xticks=[i for i in range(0, RATIO_BINS + 1, 4)] + ([RATIO_BINS + 0.5] if over else []),
                 xlabels=[f"{i / RATIO_BINS:g}" for i in range(0, RATIO_BINS + 1, 4)] + ([">1"] if over else []))
    pw, ph = W - ML - MR, H - MT - MB
    bw = pw / n_bins
    for i in range(n_bins):
        c = counts[i]
        if not c:
            continue
        h = c / y1 * ph
        lo = i / RATIO_BINS
        tip = f"> 1: {c} traces" if i == RATIO_BINS else f"[{lo:.2f}, {lo + 1 / RATIO_BINS:.2f}): {c} traces"
        body.append(f'<rect x="{ML + i * bw + 1:.1f}" y="{MT + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                    f'fill="{KEPT_COLOR}"><title>{_esc(tip)}</title></rect>')
    return _svg(body, title)


def tokens_scatter(stats: Stats) -> str:
    title = "tokens before vs after" + (f" (sample of {len(stats.sample):,})" if stats.rows > len(stats.sample) else "")
    if not stats.sample:
        return _empty_plot(title)
    top = max(max(b for b, _ in stats.sample), max(a for _, a in stats.sample), 1)
    m = _nice_ticks(0, top)[-1]
    body = _axes(title, "tokens before", "tokens after", 0, m, 0, m)
    pw, ph = W - ML - MR, H - MT - MB
    body.append(f'<line x1="{ML}" y1="{MT + ph}" x2="{ML + pw}" y2="{MT}" class="diag"><title>after = before'
                "</title></line>")
    r = 2.5 if len(stats.sample) > 300 else 3.5
    for b, a in stats.sample:
        body.append(f'<circle cx="{ML + b / m * pw:.1f}" cy="{MT + ph - a / m * ph:.1f}" r="{r}" class="pt-dot"/>')
    return _svg(body, title)


def surprisal_histogram(stats: Stats) -> str:
    title = "first-token surprisal of kept vs pruned steps"
    kept, pruned = stats.surprisal_hist["kept"], stats.surprisal_hist["pruned"]
    used = [i for i in range(len(kept)) if kept[i] or pruned[i]]
    if not used:
        return _empty_plot(title)
    # display range: from 0 to the highest non-empty fine bin, merged into at most 40 bars
    per_nat = round(1 / SURPRISAL_BIN)
    first = used[0] // per_nat * per_nat  # start at a whole nat
    last = used[-1] + 1
    merge = max(1, math.ceil((last - first) / 40))
    n = math.ceil((last - first) / merge)
    width = SURPRISAL_BIN * merge
    x0 = first * SURPRISAL_BIN
    k = [sum(kept[first + i * merge:first + (i + 1) * merge]) for i in range(n)]
    p = [sum(pruned[first + i * merge:first + (i + 1) * merge]) for i in range(n)]
    y1 = max(_nice_ticks(0, max(max(k), max(p)), integer=True)[-1], 1)
    x1 = x0 + n * width
    body = _axes(title, "surprisal (nats)" + (f", last bar \u2265 {SURPRISAL_MAX:g}" if last == len(kept) else ""),
                 "steps", x0, x1, 0, y1, xticks=[t for t in _nice_ticks(x0, x1) if t <= x1 + 1e-9])
    pw, ph = W - ML - MR, H - MT - MB
    bw = pw / n
    for i in range(n):
        for series, counts, color, off in (("kept", k, KEPT_COLOR, 0), ("pruned", p, PRUNED_COLOR, 0.5)):
            c = counts[i]
            if not c:
                continue
            h = c / y1 * ph
            tip = f"{series}, [{x0 + i * width:g}, {x0 + (i + 1) * width:g}) nats: {c} steps"
            body.append(f'<rect x="{ML + (i + off) * bw + 0.5:.1f}" y="{MT + ph - h:.1f}" '
                        f'width="{max(bw / 2 - 0.5, 0.5):.1f}" height="{h:.1f}" fill="{color}" fill-opacity="0.85">'
                        f"<title>{_esc(tip)}</title></rect>")
    lx = W - MR - 100
    ly = MT - 16  # between the title and the plot area
    body.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{KEPT_COLOR}"/>'
                f'<text x="{lx + 14}" y="{ly + 9}" class="lg">kept</text>'
                f'<rect x="{lx + 52}" y="{ly}" width="10" height="10" fill="{PRUNED_COLOR}"/>'
                f'<text x="{lx + 66}" y="{ly + 9}" class="lg">pruned</text>')
    return _svg(body, title)


# ---------------------------------------------------------------------------------------- page

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:0 0 4px;word-break:break-all}
.src{color:#666;margin:0 0 12px;word-break:break-all}
table.stats{border-collapse:collapse;background:#fff;min-width:480px}
table.stats td{padding:3px 12px;border-bottom:1px solid #eee}table.stats td.v{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:10px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}
svg.plot{background:#fff;border:1px solid #e3e3e3}
svg text{font:11px system-ui,sans-serif;fill:#333}svg .pt{text-anchor:middle;font-weight:600;font-size:12px}
svg .xl,svg .al{text-anchor:middle}svg .yl{text-anchor:end}svg .grid{stroke:#eee}svg .ax{stroke:#888}
svg .diag{stroke:#999;stroke-dasharray:4 3}svg .pt-dot{fill:#2b8cbe;fill-opacity:.55}
ol.toc{columns:2;font-size:13px;padding-left:28px}ol.toc span{color:#666}
.legend{display:flex;align-items:center;gap:0;flex-wrap:wrap;margin:6px 0 4px;font-size:12px}
.legend span.sw{display:inline-block;padding:2px 6px;border:1px solid #ddd;min-width:34px;text-align:center}
.legend .lbl{margin:0 8px}
section.trace{background:#fff;border:1px solid #e3e3e3;border-radius:4px;padding:10px 14px;margin:14px 0}
.facts{color:#555;margin:0 0 6px;font-size:13px}a.top{text-decoration:none;font-weight:normal;color:#999}
details.prompt pre{white-space:pre-wrap;word-break:break-word;background:#f4f4f4;padding:8px;max-height:320px;
overflow:auto;font-size:12px}
.steps{margin-top:6px}
.step{white-space:pre-wrap;word-break:break-word;padding:3px 6px 3px 4px;margin:2px 0;border-radius:3px;
font:12.5px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;border-left:4px solid transparent}
.step .sv{display:inline-block;min-width:3.2em;margin-right:6px;font-size:10px;color:#444;text-align:right;
vertical-align:top;padding-top:1px}
.step.pruned{opacity:.5}.step.pruned del{text-decoration:line-through;text-decoration-color:#b00}
.step.pruned{border-left-color:#e34a33}.step:not(.pruned){border-left-color:#2b8cbe}
.step del,.step .text{text-decoration-thickness:1px}
.sinf{background:repeating-linear-gradient(45deg,#e8e8e8 0 6px,#f6f6f6 6px 12px)}
.step.sinf .sv{color:#7a3fb0;font-weight:600}
"""


def _scale_css() -> str:
    return "".join(f".s{i}{{background:{c}}}" for i, c in enumerate(SCALE_COLORS))


def _legend() -> str:
    cells = []
    for i, c in enumerate(SCALE_COLORS):
        lo = i * SCALE_STEP
        label = f"&ge;{lo:g}" if i == SCALE_BINS - 1 else f"{lo:g}&ndash;{lo + SCALE_STEP:g}"
        cells.append(f'<span class="sw s{i}">{label}</span>')
    return ('<div class="legend"><span class="lbl">first-token surprisal (nats):</span>' + "".join(cells)
            + '<span class="lbl"></span><span class="sw sinf">&infin; / null</span>'
            + '<span class="lbl">&nbsp; <del>struck through, dimmed</del> = pruned; '
            + "number = surprisal; hover a step for details</span></div>")


def _stat_rows(s: dict) -> list[tuple[str, str, object, str]]:
    """(key, label, value, shown) for the statistics table."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    return [
        ("rows_read", "rows read", s["rows_read"], _fmt(s["rows_read"])),
        ("rows", "traces with stage-2 fields", s["rows"], _fmt(s["rows"])),
        ("rows_skipped", "rows skipped", s["rows_skipped"], _fmt(s["rows_skipped"])),
        ("tokens_before_total", "thinking tokens before (total)", s["tokens_before_total"],
         _fmt(s["tokens_before_total"])),
        ("tokens_after_total", "thinking tokens after (total)", s["tokens_after_total"],
         _fmt(s["tokens_after_total"])),
        ("tokens_before_mean", "tokens before (mean per trace)", s["tokens_before_mean"],
         _fmt(s["tokens_before_mean"], 1)),
        ("tokens_after_mean", "tokens after (mean per trace)", s["tokens_after_mean"],
         _fmt(s["tokens_after_mean"], 1)),
        ("compression_ratio", "compression ratio (total after / total before)", s["compression_ratio"],
         f"{s['compression_ratio']:.4f}"),
        ("mean_trace_ratio", "mean per-trace ratio", s["mean_trace_ratio"], f"{s['mean_trace_ratio']:.4f}"),
        ("steps_kept", "steps kept", s["steps_kept"], _fmt(s["steps_kept"])),
        ("steps_total", "steps in total", s["steps_total"], _fmt(s["steps_total"])),
        ("steps_kept_fraction", "fraction of steps kept", s["steps_kept_fraction"], pct(s["steps_kept_fraction"])),
        ("rows_unchanged", "traces left whole (already within budget)", s["rows_unchanged"],
         _fmt(s["rows_unchanged"])),
        ("rows_coarse", "traces whose steps come from stage 1b", s["rows_coarse"], _fmt(s["rows_coarse"])),
        ("surprisal_mean_kept", "mean surprisal of kept steps (nats)", s["surprisal_mean_kept"],
         f"{s['surprisal_mean_kept']:.3f}"),
        ("surprisal_mean_pruned", "mean surprisal of pruned steps (nats)", s["surprisal_mean_pruned"],
         f"{s['surprisal_mean_pruned']:.3f}"),
    ]


def _head(title: str, source: str, stats: Stats, toc: list[str], max_traces: int) -> str:
    s = stats.summary()
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{CSS}{_scale_css()}</style>",
        "</head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="src">{_esc(source)}</p>',
        '<h2 id="stats">Corpus statistics</h2>',
    ]
    if stats.skipped:
        n = sum(stats.skipped.values())
        reasons = "; ".join(f"{c:,} &times; {_esc(r)}" for r, c in stats.skipped.most_common(8))
        out.append(f'<p class="note" id="skipped" data-skipped="{n}">{n:,} row{"s" if n != 1 else ""} '
                   f"skipped: {reasons}</p>")
    out.append('<table class="stats">')
    for key, label, value, shown in _stat_rows(s):
        out.append(f'<tr><td>{_esc(label)}</td><td class="v" data-stat="{key}" data-value="{value!r}">{shown}'
                   "</td></tr>")
    out.append("</table>")
    out.append('<h2 id="plots">Plots</h2><div class="plots">')
    out += [ratio_histogram(stats), tokens_scatter(stats), surprisal_histogram(stats)]
    n_none = stats.surprisal_none["kept"] + stats.surprisal_none["pruned"]
    out.append("</div>")
    if n_none:
        steps = "1 step" if n_none == 1 else f"{n_none:,} steps"
        out.append(f'<p class="src">{steps} with null/inf surprisal (nothing before the step) '
                   f'{"is" if n_none == 1 else "are"} not in the surprisal histogram.</p>')
    shown = len(toc)
    more = f" (the first {shown:,} of {stats.rows:,})" if stats.rows > shown else ""
    out.append(f'<h2 id="toc">Traces{more}</h2>')
    if stats.rows > shown and shown == max_traces:
        out.append(f'<p class="src">Showing at most {max_traces:,} traces; use --max-traces for more.</p>')
    out.append('<ol class="toc">' + "".join(toc) + "</ol>")
    out.append(_legend())
    return "\n".join(out) + "\n"


def write_report(input, output_html, *, max_traces: int = 50, title: str | None = None) -> Stats:
    """Stream the stage-2 rows of ``input`` (any format :func:`~asap_fast.pipeline.records.read_rows`
    reads) and write the self-contained HTML page ``output_html``; returns the statistics.

    Raises FileNotFoundError / ValueError (one line) for a missing or unsupported input or an
    output whose folder does not exist.
    """
    if max_traces < 0:
        raise ValueError(f"max_traces must be >= 0, got {max_traces}")
    output_html = Path(output_html)
    check_input(input)  # before anything is written
    rows = read_rows(input)
    if output_html.is_dir():
        raise ValueError(f"output {output_html} is a directory; name an .html file")
    if not output_html.parent.exists():
        raise FileNotFoundError(f"output folder not found: {output_html.parent}")
    title = title or f"ASAP report: {Path(input).name}"
    stats = Stats()
    toc: list[str] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as traces:
        for row in rows:
            stats.rows_read += 1
            if row.record is None:
                stats.skip(row.error or "unreadable row")
                continue
            view = trace_view(row.record)
            if isinstance(view, str):
                stats.skip(view)
                continue
            stats.add(view.before, view.after, view.surprisal, view.kept, view.coarse)
            if len(toc) < max_traces:
                number = len(toc) + 1
                anchor = f"t{number}"
                traces.write(render_trace(number, anchor, row.record, view))
                ident = row.record.get("id", f"row {row.line}")
                ratio = view.after / view.before if view.before else 0.0
                toc.append(f'<li><a href="#{anchor}">{_esc(ident)}</a> <span>&times;{ratio:.2f}, '
                           f"{len(view.kept)}/{len(view.steps)} steps</span></li>")
        tmp = output_html.with_name(output_html.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.write(_head(title, str(input), stats, toc, max_traces))
            traces.seek(0)
            shutil.copyfileobj(traces, out)
            out.write("</main></body></html>\n")
        os.replace(tmp, output_html)
    return stats
