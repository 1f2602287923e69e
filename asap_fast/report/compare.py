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

from asap_fast.methods.view import KeptView, kept_view
from asap_fast.pipeline.records import check_input, read_rows
from asap_fast.report.html import CSS, KEPT_COLOR, PRUNED_COLOR, _esc

__all__ = ["MethodStats", "write_comparison"]

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

    def add(self, view: KeptView) -> None:
        self.rows += 1
        self.methods.add(view.method)
        self.tokens_before += view.tokens_before
        self.tokens_after += view.tokens_after
        if view.tokens_before:
            self.ratio_sum += view.tokens_after / view.tokens_before
            self.ratio_rows += 1
        if view.kind == "steps":
            self.step_rows += 1
            self.steps_total += len(view.steps)
            self.steps_kept += view.steps_kept

    def summary(self) -> dict:
        return {
            "label": self.label, "path": self.path, "rows_read": self.rows_read, "rows": self.rows,
            "rows_skipped": sum(self.skipped.values()), "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "compression_ratio": self.tokens_after / self.tokens_before if self.tokens_before else 0.0,
            "mean_trace_ratio": self.ratio_sum / self.ratio_rows if self.ratio_rows else 0.0,
            "steps_kept_fraction": self.steps_kept / self.steps_total if self.steps_total else None,
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
            view = kept_view(row.record)
            if isinstance(view, str):
                st.skipped[view] = st.skipped.get(view, 0) + 1
                continue
            st.add(view)
            key = row_key(row.record)
            if n == 0 and len(shown) < max_traces:
                shown.append((key, str(row.record.get("id", f"row {row.line}"))))
                views[0][key] = view
            elif n > 0 and key in wanted:
                views[n][key] = view
    _labels(stats)
    labels = [s.label for s in stats]
    title = title or "Methods compared: " + ", ".join(labels)

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_esc(title)}</title>",
           f"<style>{CSS}{COMPARE_CSS}</style>", "</head><body><main>", f"<h1>{_esc(title)}</h1>",
           '<h2 id="stats">Compression per method</h2>', '<table class="cmp" id="methods"><tr><th>method</th>'
           "<th>rows</th><th>skipped</th><th>tokens before</th><th>tokens after</th><th>compression</th><th></th>"
           "<th>mean per trace</th><th>steps kept</th></tr>"]
    for s in stats:
        d = s.summary()
        steps = "&ndash;" if d["steps_kept_fraction"] is None else f"{100 * d['steps_kept_fraction']:.1f}%"
        width = min(max(d["compression_ratio"], 0.0), 1.5) * 120
        out.append(
            f'<tr data-label="{_esc(s.label)}" data-ratio="{d["compression_ratio"]!r}"><td title="{_esc(s.path)}">'
            f'{_esc(s.label)}</td><td>{d["rows"]:,}</td><td>{d["rows_skipped"]:,}</td><td>{d["tokens_before"]:,}</td>'
            f'<td>{d["tokens_after"]:,}</td><td>{d["compression_ratio"]:.4f}</td><td><span class="bar" style="width:'
            f'{width:.0f}px;background:{KEPT_COLOR}"></span><span class="bar" style="width:{max(120 - width, 0):.0f}px;'
            f'background:{PRUNED_COLOR};opacity:.25"></span></td><td>{d["mean_trace_ratio"]:.4f}</td><td>{steps}</td></tr>')
    out.append("</table>")
    out.append('<p class="src">compression = thinking tokens after / before over the rows each method wrote '
               "(counted with the tokenizer each run used); struck-through text below is what a method removed.</p>")
    for s in stats:
        if s.skipped:
            reasons = "; ".join(f"{c:,} &times; {_esc(r)}" for r, c in sorted(s.skipped.items(), key=lambda x: -x[1])[:5])
            out.append(f'<p class="note">{_esc(s.label)}: skipped {reasons}</p>')
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
