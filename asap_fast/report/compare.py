"""`asap report A B ... OUT.html`: several methods' outputs of the same traces, side by side.

One self-contained page (inline CSS, no JavaScript, nothing fetched): a table of each input's
compression (rows, thinking tokens before and after, the compression ratio, the mean per-trace
ratio, steps kept where the method removes steps) with bars, then the first ``max_traces`` traces
of the first input, each shown once per input in columns: every step of the thinking with the
text that method removed struck through (whole steps, text spans or words, as the method keeps
them). Traces are matched across inputs by ``id`` (by prompt and generation when a row has none).

Inputs are streamed once each; memory holds the running sums and the shown traces only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from asap_fast.methods.view import KeptView, kept_view, method_of
from asap_fast.pipeline.records import check_input, read_rows
from asap_fast.report.html import CSS, KEPT_COLOR, PRUNED_COLOR, _esc

__all__ = ["MethodStats", "RATIO_GAP", "row_counts", "write_comparison"]

RATIO_GAP = 0.05  # mean achieved ratios further apart than this: the page warns the budgets differ

COMPARE_CSS = """
table.cmp{border-collapse:collapse;background:#fff}table.cmp th,table.cmp td{padding:4px 10px;
border-bottom:1px solid #eee;text-align:right;font-variant-numeric:tabular-nums}table.cmp th:first-child,
table.cmp td:first-child{text-align:left}.bar{display:inline-block;height:10px;vertical-align:middle}
.cols{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(300px,1fr);gap:10px;overflow-x:auto}
.col{background:#fff;border:1px solid #e3e3e3;border-radius:4px;padding:6px 8px;min-width:0}
.col h4{margin:0 0 4px;font-size:13px}.col .facts{font-size:12px}
.col .step{font:11.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-word;margin:2px 0;padding:2px 4px;border-left:3px solid #2b8cbe;background:#fcfcfc}
.col .step.gone{border-left-color:#e34a33;opacity:.55}.col del{color:#b00;text-decoration:line-through}
.col .missing{color:#999;font-style:italic}
"""


def row_key(record: dict) -> str:
    """Traces are matched across inputs by id, else by their prompt and generation."""
    if record.get("id") is not None:
        return "id:" + str(record["id"])
    content = json.dumps([record.get("prompt"), record.get("generation")], ensure_ascii=True, default=str)
    return "sha:" + hashlib.sha256(content.encode()).hexdigest()


def row_counts(record: dict) -> tuple[str, int, int] | str:
    """(method, tokens_before, tokens_after) read from a row's own fields, or why it has none: every
    row a method wrote counts, whether or not its steps can be shown."""
    method = method_of(record)
    if method is None:
        return "no method fields (method, kept_steps / kept_spans / kept_words)"
    before, after = record.get("tokens_before"), record.get("tokens_after")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (before, after)):
        return "no tokens_before / tokens_after"
    return method, before, after


@dataclass
class MethodStats:
    """Running sums of one input."""

    path: str
    label: str = ""
    rows_read: int = 0
    rows: int = 0
    skipped: dict = field(default_factory=dict)
    tokens_before: int = 0
    tokens_after: int = 0
    ratio_sum: float = 0.0
    ratio_rows: int = 0
    steps_total: int = 0
    steps_kept: int = 0
    step_rows: int = 0
    methods: set = field(default_factory=set)
    counts: dict = field(default_factory=dict)  # row key -> (tokens_before, tokens_after)
    not_shown: dict = field(default_factory=dict)  # why a counted row's steps cannot be shown
    missing: list = field(default_factory=list)  # ids of rows other inputs have and this one lacks
    buckets: dict = field(default_factory=dict)  # tokenskip_ratio -> [rows, before, after]
    shared: tuple = (0, 0, 0, 0.0)  # (rows, before, after, sum of ratios) over the rows all inputs share

    def add(self, key: str, method: str, before: int, after: int, record: dict) -> None:
        self.rows += 1
        self.methods.add(method)
        self.counts[key] = (before, after)
        self.tokens_before += before
        self.tokens_after += after
        if before:
            self.ratio_sum += after / before
            self.ratio_rows += 1
        kept = record.get("kept_steps")
        steps = record.get("step_surprisal", record.get("step_importance"))
        if isinstance(kept, list) and isinstance(steps, list):
            self.step_rows += 1
            self.steps_total += len(steps)
            self.steps_kept += len(set(kept))
        ratio = record.get("tokenskip_ratio")
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            bucket = self.buckets.setdefault(float(ratio), [0, 0, 0])
            bucket[0] += 1
            bucket[1] += before
            bucket[2] += after

    def share(self, keys: set) -> None:
        rows = before = after = 0
        ratios = 0.0
        for key in keys:
            b, a = self.counts[key]
            rows, before, after = rows + 1, before + b, after + a
            ratios += a / b if b else 1.0
        self.shared = (rows, before, after, ratios)

    def summary(self) -> dict:
        return {
            "label": self.label, "path": self.path, "rows_read": self.rows_read, "rows": self.rows,
            "rows_skipped": sum(self.skipped.values()), "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "compression_ratio": self.tokens_after / self.tokens_before if self.tokens_before else 0.0,
            "mean_trace_ratio": self.ratio_sum / self.ratio_rows if self.ratio_rows else 0.0,
            "steps_kept_fraction": self.steps_kept / self.steps_total if self.steps_total else None,
            "rows_missing": len(self.missing), "shared_rows": self.shared[0],
            "shared_tokens_before": self.shared[1], "shared_tokens_after": self.shared[2],
            "shared_compression_ratio": self.shared[2] / self.shared[1] if self.shared[1] else 0.0,
            "mean_achieved_ratio": self.shared[3] / self.shared[0] if self.shared[0] else 0.0,
        }


def _labels(stats: list[MethodStats]) -> None:
    """Each input's label: its method (the one its rows name), with the file name when two inputs
    share a method or an input has none."""
    base = [next(iter(s.methods)) if len(s.methods) == 1 else Path(s.path).name for s in stats]
    for s, label in zip(stats, base):
        s.label = label if base.count(label) == 1 else f"{label} ({Path(s.path).name})"


def _render_column(label: str, view: KeptView | None) -> str:
    if view is None:
        return f'<div class="col"><h4>{_esc(label)}</h4><p class="missing">not in this output (rejected or absent)</p></div>'
    ratio = view.tokens_after / view.tokens_before if view.tokens_before else 0.0
    facts = f"tokens {view.tokens_before:,} &rarr; {view.tokens_after:,} (&times;{ratio:.2f})"
    if view.kind == "steps":
        facts += f" &middot; steps {view.steps_kept}/{len(view.steps)}"
    parts = [f'<div class="col" data-method="{_esc(view.method)}"><h4>{_esc(label)}</h4><p class="facts">{facts}</p>']
    for i, pieces in enumerate(view.steps):
        kept_any = any(kept for _, kept in pieces)
        text = view.joiner.join(_esc(t) if kept else f"<del>{_esc(t)}</del>" for t, kept in pieces)
        parts.append(f'<div class="step{"" if kept_any else " gone"}" data-step="{i}">{text}</div>')
    parts.append("</div>")
    return "\n".join(parts)


def write_comparison(inputs, output_html, *, max_traces: int = 20, title: str | None = None) -> list[MethodStats]:
    """Stream each input (rows of `asap fine` or `asap compress --method ...`) and write the page
    ``output_html``; returns each input's statistics, in order."""
    if max_traces < 0:
        raise ValueError(f"max_traces must be >= 0, got {max_traces}")
    inputs = [str(p) for p in inputs]
    if len(inputs) < 2:
        raise ValueError("a comparison needs at least two inputs")
    for path in inputs:
        check_input(path)
    output_html = Path(output_html)
    if output_html.is_dir():
        raise ValueError(f"output {output_html} is a directory; name an .html file")
    if not output_html.parent.exists():
        raise FileNotFoundError(f"output folder not found: {output_html.parent}")

    stats = [MethodStats(path) for path in inputs]
    shown: list[tuple[str, str]] = []  # (key, id shown) of the traces shown, from the first input
    views: list[dict[str, KeptView]] = [{} for _ in inputs]
    for n, path in enumerate(inputs):
        wanted = {key for key, _ in shown}
        for row in read_rows(path):
            st = stats[n]
            st.rows_read += 1
            if row.record is None:
                reason = (row.error or "unreadable row").split(":")[0]
                st.skipped[reason] = st.skipped.get(reason, 0) + 1
                continue
            counted = row_counts(row.record)
            if isinstance(counted, str):
                st.skipped[counted] = st.skipped.get(counted, 0) + 1
                continue
            key = row_key(row.record)
            if key in st.counts:
                st.skipped["a second row of the same trace"] = st.skipped.get("a second row of the same trace", 0) + 1
                continue
            st.add(key, *counted, row.record)
            view = kept_view(row.record)
            if isinstance(view, str):  # counted all the same; only its step-by-step view is missing
                st.not_shown[view] = st.not_shown.get(view, 0) + 1
                continue
            if n == 0 and len(shown) < max_traces:
                shown.append((key, str(row.record.get("id", f"row {row.line}"))))
                views[0][key] = view
            elif n > 0 and key in wanted:
                views[n][key] = view
    _labels(stats)
    labels = [s.label for s in stats]
    every = set().union(*(s.counts for s in stats))
    shared = set.intersection(*(set(s.counts) for s in stats))
    for s in stats:
        s.missing = sorted(k.removeprefix("id:") for k in every - set(s.counts))
        s.share(shared)
    means = {s.label: s.summary()["mean_achieved_ratio"] for s in stats}
    gap = max(means.values()) - min(means.values()) if shared else 0.0
    title = title or "Methods compared: " + ", ".join(labels)

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_esc(title)}</title>",
           f"<style>{CSS}{COMPARE_CSS}</style>", "</head><body><main>", f"<h1>{_esc(title)}</h1>",
           '<h2 id="stats">Compression per method</h2>',
           f'<p class="src" id="shared" data-shared="{len(shared)}" data-union="{len(every)}">Totals, compression and '
           f"achieved ratio are over the {len(shared):,} traces that every input has (of {len(every):,} in any "
           "input); a method's other rows are counted in &ldquo;rows&rdquo; only, the traces it lacks (rejects, "
           "absent) listed below.</p>",
           '<table class="cmp" id="methods"><tr><th>method</th>'
           "<th>rows</th><th>lacks</th><th>unreadable</th><th>tokens before</th><th>tokens after</th><th>compression</th>"
           "<th></th><th>mean achieved ratio</th><th>steps kept</th></tr>"]
    for s in stats:
        d = s.summary()
        steps = "&ndash;" if d["steps_kept_fraction"] is None else f"{100 * d['steps_kept_fraction']:.1f}%"
        width = min(max(d["shared_compression_ratio"], 0.0), 1.5) * 120
        out.append(
            f'<tr data-label="{_esc(s.label)}" data-ratio="{d["shared_compression_ratio"]!r}" '
            f'data-achieved="{d["mean_achieved_ratio"]!r}" data-before="{d["shared_tokens_before"]}">'
            f'<td title="{_esc(s.path)}">{_esc(s.label)}</td><td>{d["rows"]:,}</td><td>{d["rows_missing"]:,}</td>'
            f'<td>{d["rows_skipped"]:,}</td><td>{d["shared_tokens_before"]:,}</td><td>{d["shared_tokens_after"]:,}</td>'
            f'<td>{d["shared_compression_ratio"]:.4f}</td><td><span class="bar" style="width:'
            f'{width:.0f}px;background:{KEPT_COLOR}"></span><span class="bar" style="width:{max(120 - width, 0):.0f}px;'
            f'background:{PRUNED_COLOR};opacity:.25"></span></td><td>{d["mean_achieved_ratio"]:.4f}</td><td>{steps}</td></tr>')
    out.append("</table>")
    out.append('<p class="src">compression = thinking tokens after / before summed over the shared traces; mean '
               "achieved ratio = the mean over those traces of each one&rsquo;s tokens after / before (counted with "
               "the tokenizer each run used); struck-through text below is what a method removed.</p>")
    if gap > RATIO_GAP:
        lo, hi = min(means, key=means.get), max(means, key=means.get)
        out.append(f'<p class="note warn" id="ratio-warning" data-gap="{gap!r}"><b>Budgets differ:</b> the mean '
                   f"achieved ratios of {_esc(lo)} ({means[lo]:.3f}) and {_esc(hi)} ({means[hi]:.3f}) are "
                   f"{gap:.3f} apart (more than {RATIO_GAP}); their scores compare different compressions. "
                   "Rerun with <code>--match-ratio R</code> on every method.</p>")
    for s in stats:
        if s.missing:
            ids = ", ".join(_esc(k) for k in s.missing[:50]) + (" &hellip;" if len(s.missing) > 50 else "")
            out.append(f'<p class="note" data-missing="{_esc(s.label)}">{_esc(s.label)} lacks '
                       f"{len(s.missing):,} trace{'s' if len(s.missing) != 1 else ''} that other inputs have "
                       f"(rejected or absent): {ids}</p>")
        if s.skipped:
            reasons = "; ".join(f"{c:,} &times; {_esc(r)}" for r, c in sorted(s.skipped.items(), key=lambda x: -x[1])[:5])
            out.append(f'<p class="note">{_esc(s.label)}: rows not counted: {reasons}</p>')
        if s.not_shown:
            reasons = "; ".join(f"{c:,} &times; {_esc(r)}" for r, c in sorted(s.not_shown.items(), key=lambda x: -x[1]))
            out.append(f'<p class="note">{_esc(s.label)}: counted, but not shown step by step: {reasons}</p>')
        if s.buckets:
            cells = "".join(f"<tr><td>{r:g}</td><td>{b[0]:,}</td><td>{b[2] / b[1] if b[1] else 0:.4f}</td></tr>"
                            for r, b in sorted(s.buckets.items()))
            out.append(f'<table class="cmp" data-buckets="{_esc(s.label)}"><tr><th>{_esc(s.label)}: ratio bucket</th>'
                       f"<th>rows</th><th>achieved</th></tr>{cells}</table>")
    out.append(f'<h2 id="traces">Traces side by side (the first {len(shown):,} of {_esc(labels[0])})</h2>')
    for number, (key, ident) in enumerate(shown, 1):
        out.append(f'<section class="trace" id="t{number}"><h3>{number}. {_esc(ident)}</h3><div class="cols">')
        out.extend(_render_column(label, views[n].get(key)) for n, label in enumerate(labels))
        out.append("</div></section>")
    out.append("</main></body></html>\n")
    tmp = output_html.with_name(output_html.name + ".tmp")
    tmp.write_text("\n".join(out), encoding="utf-8")
    os.replace(tmp, output_html)
    return stats
