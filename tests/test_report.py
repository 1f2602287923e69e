"""`asap report`: the HTML page, parsed back with html.parser and checked against the rows."""

import gzip
import json
from html.parser import HTMLParser

import pytest

from asap_fast import cli
from asap_fast.report.html import scale_class, write_report


def trace_row(i: int, n_steps: int, kept: list[int], *, coarse: bool = False, surprisal=None) -> dict:
    steps = [f"Step {i}.{k}: if a < b && c > d then <tag> & $\\frac{{1}}{{2}}$ `x<y`" for k in range(n_steps)]
    think = "\n\n".join(steps)
    surprisal = surprisal if surprisal is not None else [None] + [0.5 + 1.3 * k for k in range(1, n_steps)]
    row = {
        "id": f"row-{i}",
        "kind": "code",
        "prompt": f"Write <code> & print('{i}') </script>",
        "generation": ("<think>\n" + ("ignored original\n\nthinking" if coarse else think)
                       + "\n</think>\n```python\nprint(1 < 2)\n```"),
        "pruned_think": "\n\n".join(steps[k] for k in kept),
        "step_surprisal": surprisal,
        "kept_steps": kept,
        "tokens_before": 100 * n_steps + i,
        "tokens_after": 100 * len(kept),
        "messages": [],
    }
    if coarse:
        row["coarse_think"] = think
        row["coarse_alignment"] = list(range(n_steps))
        row["coarse_attempts"] = 1
    return row


class Page(HTMLParser):
    """What the tests look at: resources, statistics, traces and their (struck-through) steps."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stats, self.traces, self.tags, self.attrs = {}, [], [], []
        self.skipped = None
        self._stat = None
        self._in_del = 0
        self._step = None
        self._text_depth = 0
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs.append((tag, a))
        if "data-stat" in a:
            self.stats[a["data-stat"]] = float(a["data-value"])
        if a.get("id") == "skipped":
            self.skipped = int(a["data-skipped"])
        if tag == "section" and "trace" in a.get("class", ""):
            self.traces.append({"id": a["id"], "steps": [], "n_steps": int(a["data-steps"])})
        if tag == "div" and "step" in a.get("class", "").split():
            self._step = {"index": int(a["data-step"]), "title": a["title"], "class": a["class"],
                          "struck": False, "text": ""}
            self.traces[-1]["steps"].append(self._step)
        if tag == "del" and self._step is not None:
            self._step["struck"] = True
        if tag in ("del", "span") and "text" in a.get("class", "").split():
            self._text_depth += 1

    def handle_endtag(self, tag):
        if tag in ("del", "span") and self._text_depth:
            self._text_depth -= 1
        if tag == "div" and self._step is not None:
            self._step = None

    def handle_data(self, data):
        self.text.append(data)
        if self._step is not None and self._text_depth:
            self._step["text"] += data


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def write_rows(path, rows):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def corpus(tmp_path):
    rows = [trace_row(i, n_steps=3 + i % 5, kept=[k for k in range(3 + i % 5) if k % 2 == 0 or k == 1],
                      coarse=i % 3 == 0) for i in range(12)]
    rows.append(trace_row(99, 4, kept=[0, 1, 2, 3]))  # left whole
    bad = [
        {"id": "raw", "prompt": "p", "generation": "<think>\nx\n</think>"},  # never went through stage 2
        "this line is not JSON",
        {**trace_row(50, 3, [0]), "step_surprisal": [1.0, 2.0]},  # steps and scores disagree
    ]
    path = tmp_path / "in.jsonl.gz"
    write_rows(path, rows[:5] + bad[:1] + rows[5:9] + bad[1:] + rows[9:])
    return path, rows


def test_statistics_equal_the_rows(tmp_path, corpus):
    path, rows = corpus
    out = tmp_path / "report.html"
    write_report(path, out)
    page = parse(out)
    s = page.stats
    before = sum(r["tokens_before"] for r in rows)
    after = sum(r["tokens_after"] for r in rows)
    assert s["rows"] == len(rows)
    assert s["rows_read"] == len(rows) + 3
    assert s["tokens_before_total"] == before
    assert s["tokens_after_total"] == after
    assert s["tokens_before_mean"] == pytest.approx(before / len(rows))
    assert s["tokens_after_mean"] == pytest.approx(after / len(rows))
    assert s["compression_ratio"] == pytest.approx(after / before)
    assert s["mean_trace_ratio"] == pytest.approx(sum(r["tokens_after"] / r["tokens_before"] for r in rows) / len(rows))
    assert s["steps_total"] == sum(len(r["step_surprisal"]) for r in rows)
    assert s["steps_kept"] == sum(len(r["kept_steps"]) for r in rows)
    assert s["rows_unchanged"] == sum(len(r["kept_steps"]) == len(r["step_surprisal"]) for r in rows) > 1
    assert s["rows_coarse"] == sum(1 for r in rows if "coarse_think" in r)
    pruned = [x for r in rows for k, x in enumerate(r["step_surprisal"]) if k not in r["kept_steps"] and x is not None]
    assert s["surprisal_mean_pruned"] == pytest.approx(sum(pruned) / len(pruned))
    assert len(page.traces) == len(rows)
    assert page.tags.count("svg") == 3


def test_struck_steps_are_exactly_the_pruned_ones(tmp_path, corpus):
    path, rows = corpus
    out = tmp_path / "report.html"
    write_report(path, out)
    page = parse(out)
    for row, trace in zip(rows, page.traces):
        assert trace["n_steps"] == len(row["step_surprisal"])
        assert [st["index"] for st in trace["steps"]] == list(range(len(row["step_surprisal"])))
        struck = {st["index"] for st in trace["steps"] if st["struck"]}
        dimmed = {st["index"] for st in trace["steps"] if "pruned" in st["class"].split()}
        expected = set(range(len(row["step_surprisal"]))) - set(row["kept_steps"])
        assert struck == dimmed == expected
        think = row.get("coarse_think") or row["generation"].split("<think>\n")[1].split("\n</think>")[0]
        assert [st["text"] for st in trace["steps"]] == think.split("\n\n")  # unescaped back exactly
        for st, value in zip(trace["steps"], row["step_surprisal"]):
            assert scale_class(value) in st["class"].split()
            if value is None:
                assert "sinf" in st["class"].split() and "null/inf" in st["title"]
            else:
                assert f"{value:.3f} nats" in st["title"]


def test_no_external_resources_and_text_is_escaped(tmp_path, corpus):
    path, _ = corpus
    out = tmp_path / "report.html"
    write_report(path, out, title="<b>My & report</b>")
    html_text = out.read_text(encoding="utf-8")
    page = parse(out)
    assert "script" not in page.tags  # the prompts' "</script>" stays text
    assert not {"link", "img", "iframe", "object", "embed"} & set(page.tags)
    for tag, attrs in page.attrs:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
            if tag == "a" and name == "href":
                assert value.startswith("#")
    assert "@import" not in html_text and "url(" not in html_text
    assert "<code>" not in html_text and "&lt;code&gt;" in html_text
    assert "<tag>" not in html_text and "&lt;tag&gt; &amp; $\\frac{1}{2}$" in html_text
    assert "<b>My" not in html_text and "<title>&lt;b&gt;My &amp; report&lt;/b&gt;</title>" in html_text
    assert "Write <code> & print('0') </script>" in "".join(page.text)


def test_rows_without_stage2_fields_are_skipped_with_a_note(tmp_path, corpus):
    path, _ = corpus
    out = tmp_path / "report.html"
    stats = write_report(path, out)
    page = parse(out)
    assert page.skipped == 3 and page.stats["rows_skipped"] == 3
    text = "".join(page.text)
    assert "no stage-2 fields" in text and "malformed JSON" in text and "step count differs" in text
    assert stats.skipped["step count differs from step_surprisal"] == 1


def test_max_traces_limit(tmp_path, corpus):
    path, rows = corpus
    out = tmp_path / "report.html"
    write_report(path, out, max_traces=4)
    page = parse(out)
    assert [t["id"] for t in page.traces] == ["t1", "t2", "t3", "t4"]
    assert page.stats["rows"] == len(rows)  # statistics still cover every row
    toc = [a["href"] for tag, a in page.attrs if tag == "a" and a.get("href", "#")[1:] not in ("", "toc")]
    assert toc == ["#t1", "#t2", "#t3", "#t4"]
    assert f"the first 4 of {len(rows)}" in "".join(page.text)
    write_report(path, out, max_traces=0)
    assert parse(out).traces == []


def test_only_skipped_rows_and_empty_input(tmp_path):
    src = tmp_path / "raw.jsonl"
    write_rows(src, [{"id": "a", "prompt": "p", "generation": "g"}])
    out = tmp_path / "r.html"
    stats = write_report(src, out)
    page = parse(out)
    assert stats.rows == 0 and page.skipped == 1 and page.traces == []
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    write_report(empty, out)
    assert parse(out).stats["rows"] == 0


def test_parquet_input(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    rows = [trace_row(i, 4, [0, 3]) for i in range(3)]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "r.html"
    write_report(src, out)
    assert parse(out).stats["tokens_before_total"] == sum(r["tokens_before"] for r in rows)


def _main(monkeypatch, argv):
    return cli.main(argv)


def test_cli(tmp_path, corpus, monkeypatch, capsys):
    path, _ = corpus
    out = tmp_path / "page.html"
    assert _main(monkeypatch, ["report", str(path), str(out), "--max-traces", "2", "--title", "T"]) == 0
    captured = capsys.readouterr()
    assert str(out.resolve()) in captured.out
    assert "3 skipped" in captured.err
    assert len(parse(out).traces) == 2

    assert _main(monkeypatch, ["report", str(tmp_path / "missing.jsonl"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asap report: error: input not found") and "\n" not in err
    assert _main(monkeypatch, ["report", str(path), str(tmp_path / "no" / "dir" / "x.html")]) == 0  # folder created
    assert (tmp_path / "no" / "dir" / "x.html").is_file()


def test_real_stage2_output(tmp_path):
    """Rows as `asap fine` writes them (a tiny random model, the sample corpus, a coarse row)."""
    from pathlib import Path

    from asap_fast.pipeline.records import read_rows
    from asap_fast.stage2.fine import FineStage, PruneConfig
    from asap_fast.stage2.surprisal import SurprisalScorer
    from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

    tokenizer = tiny_tokenizer(vocab_size=800)
    model = tiny_causal_lm(len(tokenizer), hidden=32, layers=1, max_position_embeddings=16384, seed=3)
    stage = FineStage(SurprisalScorer(model, tokenizer), PruneConfig(budget=200))
    examples = Path(__file__).resolve().parents[1] / "examples" / "sample-traces.jsonl"
    rows = [row for row in read_rows(examples) if row.record.get("kind") == "math"][:5]
    rows[0].record["coarse_think"] = "\n\n".join(rows[0].record["generation"].split("</think>")[0].split("\n\n")[1:4])
    written = [r for r in stage.process([row.record for row in rows]) if isinstance(r, dict)]
    assert len(written) >= 4 and "coarse_think" in written[0]
    src = tmp_path / "fine.jsonl"
    write_rows(src, written)
    out = tmp_path / "r.html"
    write_report(src, out)
    page = parse(out)
    assert page.skipped is None and page.stats["rows"] == len(written) and page.stats["rows_coarse"] == 1
    for row, trace in zip(written, page.traces):
        struck = {st["index"] for st in trace["steps"] if st["struck"]}
        assert struck == set(range(len(row["step_surprisal"]))) - set(row["kept_steps"])
        assert "\n\n".join(st["text"] for st in trace["steps"] if not st["struck"]) == row["pruned_think"]
