"""The traces bundled with the package are the ones its README describes, readable from an install."""

import gzip
import json

from asap_fast.data import COT_TRACES, iter_jsonl, read_cot_traces


def test_the_bundled_traces_are_the_described_set():
    rows = read_cot_traces()
    assert len(rows) == 294 and len({r["id"] for r in rows}) == 294
    kinds = [r["kind"] for r in rows]
    assert kinds.count("code") == 184 and kinds.count("math") == 110
    assert sum(r["prompt"] == "" for r in rows) == 100
    assert all(r["generation"].lstrip().startswith("<think>") or "<think>" in r["generation"] for r in rows)
    assert COT_TRACES.is_file() and COT_TRACES.with_name("README.md").is_file()


def test_iter_jsonl_reads_plain_and_gzip_alike(tmp_path):
    rows = [{"id": "a", "x": "é\u2028"}, {"id": "b", "x": [1, 2]}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n"
    (tmp_path / "r.jsonl").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "r.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    assert list(iter_jsonl(tmp_path / "r.jsonl")) == rows == read_cot_traces(tmp_path / "r.jsonl.gz")
