"""The experiment's table: per method and benchmark, the compression its traces got, then Pass@1,
generated tokens and latency of the model trained on them, with the change against the untrained
student ("base") and against the reference method (ASAP by default). Written as results.md,
results.csv and results.html (the HTML adds a Pass@1 vs generated tokens plot per benchmark).

Everything is read from the steps' own files: the compressed rows' ``tokens_before`` /
``tokens_after`` (one token count for every method) and each evaluation's results.json. A step that
has not run leaves its cells empty ("n/a"), never a made-up number.
"""

from __future__ import annotations

import csv
import html
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from asap_fast.experiment.config import Experiment
from asap_fast.experiment.plan import Step

__all__ = ["ResultRow", "collect_results", "write_results"]


@dataclass
class ResultRow:
    model: str  # "base" or a method's name
    method: str  # the method kind ("" for base)
    benchmark: str
    rows: int | None = None  # compressed rows written
    rejects: int | None = None
    shared_rows: int | None = None  # rows every method wrote: the compression figures are over these
    tokens_before: int | None = None
    tokens_after: int | None = None
    compression: float | None = None  # tokens_after / tokens_before over the shared rows
    mean_ratio: float | None = None  # mean per-row tokens_after / tokens_before over the shared rows
    pass_at_1: float | None = None  # percent
    avg_tokens: float | None = None
    latency_s: float | None = None
    problems: int | None = None
    subset: bool = False
    d_pass_base: float | None = None  # points
    d_tokens_base: float | None = None  # percent
    d_pass_ref: float | None = None
    d_tokens_ref: float | None = None
    paper_pass_at_1: float | None = None
    paper_avg_tokens: float | None = None
    paper_latency_s: float | None = None


def _row_counts(path: str) -> tuple[dict[str, tuple[int, int]], int] | None:
    """{row id: (tokens_before, tokens_after)} of a compressed file, and its rejects; None before it exists."""
    from asap_fast.data import iter_jsonl

    if not os.path.exists(path):
        return None
    counts = {}
    for i, record in enumerate(iter_jsonl(path)):
        b, a = record.get("tokens_before"), record.get("tokens_after")
        if isinstance(b, int) and isinstance(a, int):
            counts[str(record.get("id", f"row:{i + 1}"))] = (b, a)
    rejects_path = Path(path).with_name(Path(path).stem + ".rejects.jsonl")
    rejects = 0
    if rejects_path.exists():
        with open(rejects_path, encoding="utf-8") as f:
            rejects = sum(1 for line in f if line.strip())
    return counts, rejects


def _compression(counts: dict[str, tuple[int, int]], rejects: int, shared: set[str]) -> dict:
    """Totals over the rows every method wrote, so that each method is measured on the same traces."""
    pairs = [counts[k] for k in shared]
    before, after = sum(b for b, _ in pairs), sum(a for _, a in pairs)
    return {"rows": len(counts), "rejects": rejects, "shared_rows": len(pairs), "tokens_before": before,
            "tokens_after": after, "compression": after / before if before else None,
            "mean_ratio": sum(a / b if b else 1.0 for b, a in pairs) / len(pairs) if pairs else None}


def _evaluation(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    p = data.get("pass_at_1")
    return {"pass_at_1": None if p is None else 100.0 * p, "avg_tokens": data.get("avg_tokens"),
            "latency_s": data.get("latency_s"), "problems": data.get("n_problems"), "subset": bool(data.get("subset"))}


def _delta_pct(new, old):
    return None if new is None or not old else 100.0 * (new - old) / old


def collect_results(exp: Experiment, steps: list[Step]) -> list[ResultRow]:
    by_name = {s.name: s for s in steps}
    kinds = {m.name: m.kind for m in exp.methods}
    read = {m.name: _row_counts(by_name[f"compress/{m.name}"].outputs["out"]) for m in exp.methods}
    present = [counts for counts, _ in filter(None, read.values())]
    shared = set.intersection(*(set(c) for c in present)) if present else set()
    compression = {name: _compression(*r, shared) for name, r in read.items() if r is not None}
    table = []
    for b in exp.benchmarks:
        rows = {}
        for model in ["base", *kinds]:
            row = ResultRow(model=model, method=kinds.get(model, ""), benchmark=b.name,
                            **compression.get(model, {}),
                            **_evaluation(by_name[f"eval/{model}/{b.name}"].outputs["results"]))
            paper = (exp.paper.get(model) or {}).get(b.name) or {}
            row.paper_pass_at_1 = paper.get("pass_at_1")
            row.paper_avg_tokens = paper.get("avg_tokens")
            row.paper_latency_s = paper.get("latency_s")
            rows[model] = row
        base, ref = rows["base"], rows.get(exp.reference_method)
        for row in rows.values():
            if row is not base and row.pass_at_1 is not None and base.pass_at_1 is not None:
                row.d_pass_base = row.pass_at_1 - base.pass_at_1
            if row is not base:
                row.d_tokens_base = _delta_pct(row.avg_tokens, base.avg_tokens)
            if ref is not None and row is not ref and row is not base:
                if row.pass_at_1 is not None and ref.pass_at_1 is not None:
                    row.d_pass_ref = row.pass_at_1 - ref.pass_at_1
                row.d_tokens_ref = _delta_pct(row.avg_tokens, ref.avg_tokens)
        table += rows.values()
    return table


def _f(value, pattern="{:.2f}", signed=False) -> str:
    if value is None:
        return "n/a"
    return ("+" if signed and value > 0 else "") + pattern.format(value)


COLUMNS = ("model", "method", "benchmark", "compression", "Pass@1", "avg tokens", "latency s",
           "dPass@1 vs base", "dtokens vs base", "dPass@1 vs ref", "dtokens vs ref", "paper")


def _cells(row: ResultRow) -> list[str]:
    compression = "n/a" if row.compression is None else (
        f"{row.compression:.3f} ({row.tokens_after:,}/{row.tokens_before:,} tokens of {row.shared_rows} shared rows; "
        f"{row.rows} written, {row.rejects} rejected)")
    paper = "" if row.paper_pass_at_1 is None else (
        f"{_f(row.paper_pass_at_1)} / {_f(row.paper_avg_tokens, '{:.0f}')} / {_f(row.paper_latency_s)}")
    return [row.model, row.method or "(untrained student)", row.benchmark, "-" if row.model == "base" else compression,
            _f(row.pass_at_1) + (" (subset)" if row.subset else ""), _f(row.avg_tokens, "{:.1f}"),
            _f(row.latency_s, "{:.3f}"), _f(row.d_pass_base, signed=True), _f(row.d_tokens_base, "{:.1f}%", True),
            _f(row.d_pass_ref, signed=True), _f(row.d_tokens_ref, "{:.1f}%", True), paper]


def _markdown(exp: Experiment, table: list[ResultRow]) -> str:
    ref = exp.reference_method or "none"
    about = (f"Config: `{exp.path}`. Compression: tokens after / before over the rows every method wrote (the "
             f"shared rows; one token count for every method). Pass@1 in percent; d = change against the untrained "
             f"student (base) and against the reference method ({ref}), in points for Pass@1 and percent for tokens. "
             "'paper' = the published Pass@1 / tokens / latency for that row, where there is one.")
    lines = [f"# {exp.name}", "", about, "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in table]
    return "\n".join(lines) + "\n"


def _csv(path: Path, table: list[ResultRow]) -> None:
    names = [f.name for f in fields(ResultRow)]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in table:
            w.writerow(["" if getattr(row, n) is None else getattr(row, n) for n in names])


PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")


def _plot(benchmark: str, rows: list[ResultRow], colors: dict[str, str]) -> str:
    """Pass@1 against average generated tokens, a point per model (SVG)."""
    pts = [r for r in rows if r.pass_at_1 is not None and r.avg_tokens is not None]
    w, h, ml, mr, mt, mb = 460, 300, 56, 110, 30, 44
    head = (f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" xmlns="http://www.w3.org/2000/svg" '
            f'aria-label="Pass@1 vs tokens, {html.escape(benchmark)}">'
            f'<text x="{(w - mr + ml) / 2}" y="18" text-anchor="middle" font-weight="bold">'
            f'{html.escape(benchmark)}: Pass@1 vs generated tokens</text>')
    if not pts:
        return head + f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">no results yet</text></svg>'
    x_hi = max(r.avg_tokens for r in pts) * 1.1 or 1.0
    y_hi = min(100.0, max(r.pass_at_1 for r in pts) + 10) or 10.0
    pw, ph = w - ml - mr, h - mt - mb

    def sx(v):
        return ml + v / x_hi * pw

    def sy(v):
        return mt + ph - v / y_hi * ph

    body = [f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>',
            f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>',
            f'<text x="{ml + pw / 2}" y="{h - 8}" text-anchor="middle">average generated tokens</text>',
            f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" text-anchor="middle">Pass@1 (%)</text>']
    for i in range(5):
        xv, yv = x_hi * i / 4, y_hi * i / 4
        body.append(f'<text x="{sx(xv):.1f}" y="{mt + ph + 16}" text-anchor="middle" font-size="11">{xv:.0f}</text>')
        body.append(f'<text x="{ml - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="11">{yv:.0f}</text>')
    for r in pts:
        c = colors[r.model]
        body.append(f'<circle cx="{sx(r.avg_tokens):.1f}" cy="{sy(r.pass_at_1):.1f}" r="5" fill="{c}">'
                    f'<title>{html.escape(r.model)}: Pass@1 {r.pass_at_1:.2f}, {r.avg_tokens:.1f} tokens</title></circle>')
    for i, r in enumerate(pts):
        body.append(f'<circle cx="{w - mr + 14}" cy="{mt + 10 + 18 * i}" r="5" fill="{colors[r.model]}"/>'
                    f'<text x="{w - mr + 24}" y="{mt + 14 + 18 * i}" font-size="12">{html.escape(r.model)}</text>')
    return head + "".join(body) + "</svg>"


def _html(exp: Experiment, table: list[ResultRow]) -> str:
    models = list(dict.fromkeys(r.model for r in table))
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in table)
    plots = "".join(_plot(b.name, [r for r in table if r.benchmark == b.name], colors) for b in exp.benchmarks)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(exp.name)}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
            "svg{margin:1em 1em 0 0;font-family:system-ui,sans-serif}</style></head><body>"
            f"<h1>{html.escape(exp.name)}</h1><p>Config: <code>{html.escape(str(exp.path))}</code>. Reference method: "
            f"{html.escape(exp.reference_method or 'none')}.</p>"
            "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + f"</tr>{rows_html}</table>"
            f"<div>{plots}</div></body></html>\n")


def write_results(exp: Experiment, steps: list[Step]) -> list[Path]:
    table = collect_results(exp, steps)
    results = next(s for s in steps if s.kind == "results")
    md, csv_path, html_path = (Path(results.outputs[k]) for k in ("md", "csv", "html"))
    for path, text in ((md, _markdown(exp, table)), (html_path, _html(exp, table))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    _csv(tmp, table)
    os.replace(tmp, csv_path)
    return [md, csv_path, html_path]
