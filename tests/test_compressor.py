"""``asap_fast.Compressor`` against the CLI on real traces with the bundled demo scorer: under
``datasets.Dataset.map(batched=True)`` (and Ray Data ``map_batches`` in the ray tier) every row
gets the values `asap fine` / `asap compress --method` write for it, byte for byte, and every row
the CLI rejects is marked with the CLI's reason."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import asap_fast as af
from asap_fast.cli import main
from asap_fast.pipeline.compressor import OUTPUT_FIELDS, REJECT_FIELD

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


@pytest.fixture(scope="module")
def rows(cot_traces) -> list[dict]:
    """The shortest real traces of each kind (short, so the demo scorer is quick), and rows the CLI
    rejects for different reasons: a thinking never closed, a code answer without a python block,
    no generation at all, and the paper's budget leaving no step (a single-step thinking under a
    ratio)."""
    chosen = []
    for kind in ("math", "code"):
        with_kind = sorted((r for r in cot_traces if r["kind"] == kind), key=lambda r: len(r["generation"]))
        chosen += [dict(r) for r in with_kind[:4 if kind == "math" else 2]]
    bad = [
        {"id": "cut", "source": "t", "kind": "math", "prompt": "p", "generation": "<think>\nnever closed"},
        {"id": "nocode", "source": "t", "kind": "code", "prompt": "p", "generation": "<think>\na\n\nb\n</think>\nprose"},
        {"id": "nogeneration", "source": "t", "kind": "math", "prompt": "p"},
        {"id": "onestep", "source": "t", "kind": "math", "prompt": "p",
         "generation": "<think>\n" + "one long step " * 20 + "\n</think>\n42"},
    ]
    # a bad row first, so the first batch holds rejects (the columns' types come from later batches)
    return [bad[0], *chosen[:3], bad[1], *chosen[3:], *bad[2:]]


def as_columns(records) -> dict[str, list]:
    """Every field of every record as a column, null where a record lacks it (what a JSON Lines
    file loaded with ``datasets`` holds; ``Dataset.from_list`` would keep the first row's fields only)."""
    names = list(dict.fromkeys(name for r in records for name in r))
    return {name: [r.get(name) for r in records] for name in names}


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")  # \uXXXX: lone surrogates too


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def cli_outputs(tmp_path, rows, *argv) -> tuple[dict, dict]:
    """(output rows by id, reject reasons by id) of one in-process CLI run over ``rows``."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(source, rows)
    assert main([*argv[:1], str(source), str(out), *argv[1:], "--quiet"]) == 0
    written = {r["id"]: r for r in read_jsonl(out)}
    rejected = {r["id"]: r["error"] for r in read_jsonl(tmp_path / "out.rejects.jsonl")}
    assert len(written) + len(rejected) == len(rows)
    return written, rejected


def assert_same_as_cli(output_rows: list[dict], written: dict, rejected: dict, method: str, inputs,
                       fields: tuple | None = None) -> None:
    """Every Compressor row equals the CLI's: a written row in every field the CLI wrote (input
    fields included; the fields the row lacked are null), a rejected one by its reason."""
    fields = fields or OUTPUT_FIELDS[method]
    assert {r["id"] for r in output_rows} == set(written) | set(rejected)
    for row in output_rows:
        if row["id"] in rejected:
            assert row[REJECT_FIELD] == rejected[row["id"]], row["id"]
            assert all(row[name] is None for name in fields)
            continue
        expected = written[row["id"]]
        assert row[REJECT_FIELD] is None, row[REJECT_FIELD]
        for name, value in expected.items():
            assert dumps(row[name]) == dumps(value), (row["id"], name)
        assert all(row[name] is None for name in row if name not in expected and name != REJECT_FIELD)
        new = [name for name in expected if name not in inputs]
        assert tuple(new) == fields  # the declared columns are exactly what the CLI adds


@pytest.fixture(scope="module")
def asap(rows):
    return af.Compressor("asap", ratio=0.5).load()


@pytest.fixture(scope="module")
def fine_cli(rows, tmp_path_factory):
    written, rejected = cli_outputs(tmp_path_factory.mktemp("fine"), rows, "fine", "--ratio", "0.5")
    assert {"cut", "nocode", "nogeneration", "onestep"} <= set(rejected) and len(written) >= 5
    assert rejected["nogeneration"] == "missing field 'generation'"
    return written, rejected


@pytest.mark.parametrize("features", [False, True])
@pytest.mark.parametrize("order", ["mixed", "rejects_first", "compressed_first"])
def test_datasets_map_equals_asap_fine(order, features, rows, asap, fine_cli):
    """Whatever the first batch holds (datasets types a column from it), with or without ``features=``."""
    datasets = pytest.importorskip("datasets")
    written, rejected = fine_cli
    if order != "mixed":
        rows = sorted(rows, key=lambda r: (r["id"] in rejected) != (order == "rejects_first"))
    ds = datasets.Dataset.from_dict(as_columns(rows))
    extra = {"features": asap.features(ds.features)} if features else {}
    out = ds.map(asap, batched=True, batch_size=3, load_from_cache_file=False, **extra)
    assert out.num_rows == len(rows)
    assert_same_as_cli(out.to_list(), written, rejected, "asap", ds.column_names)


@pytest.mark.parametrize("method", ["selective-context", pytest.param("spirit", marks=pytest.mark.slow)])  # 20 s
def test_datasets_map_equals_compress_method(method, rows, tmp_path):
    datasets = pytest.importorskip("datasets")
    written, rejected = cli_outputs(tmp_path, rows, "compress", "--method", method)
    assert len(written) >= 5
    compressor = af.Compressor(method)  # the CLI's default: ratio 0.5
    ds = datasets.Dataset.from_dict(as_columns(rows))
    out = ds.map(compressor, batched=True, batch_size=4, features=compressor.features(ds.features),
                 load_from_cache_file=False)
    assert_same_as_cli(out.to_list(), written, rejected, method, ds.column_names)


def test_datasets_map_equals_compress_tokenskip(rows, tmp_path, monkeypatch):
    """A classifier method (a tiny LLMLingua-2 classifier, no download): kept_words, [word, 0/1]
    pairs no Arrow type holds, is the CLI's value as JSON text."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("llmlingua")
    from asap_fast.methods.llmlingua2 import seed_tiktoken_cache
    from asap_fast.testing import tiny_token_classifier

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    (tmp_path / "tiktoken").mkdir()
    seed_tiktoken_cache()
    classifier = str(tiny_token_classifier(tmp_path / "tiny-xlm-roberta-large", "xlm-roberta-large",
                                           texts=[r["generation"] for r in rows if "generation" in r]))
    written, rejected = cli_outputs(tmp_path, rows, "compress", "--method", "tokenskip", "--lingua-model", classifier)
    assert len(written) >= 5
    compressor = af.Compressor("tokenskip", lingua_model=classifier)
    ds = datasets.Dataset.from_dict(as_columns(rows))
    out = ds.map(compressor, batched=True, batch_size=4, load_from_cache_file=False).to_list()
    kept_words = {r["id"]: r["kept_words"] for r in out}
    assert any(kept_words[i] is not None for i in written)
    for row in out:
        if row["id"] in written and row["kept_words"] is not None:
            row["kept_words"] = json.loads(row["kept_words"])
    assert_same_as_cli(out, written, rejected, "tokenskip", ds.column_names)


def test_batch_formats_give_the_same_rows(rows, asap):
    """dict of lists, Ray Data's numpy format (object arrays, nested arrays, numeric nulls as NaN),
    a pyarrow Table and a pandas DataFrame."""
    pa = pytest.importorskip("pyarrow")
    sample = [r for r in rows if r["id"] != "nogeneration"][:5]
    columns = as_columns(sample)
    reference = asap(columns)
    as_numpy = {name: np.array(values, dtype=object) for name, values in columns.items()}
    as_numpy["score"] = np.array([1.0, np.nan, 2.0, np.nan, 3.0])  # how Ray gives a nullable number column
    from_numpy = asap(as_numpy)
    assert from_numpy.pop("score") == [1.0, None, 2.0, None, 3.0]
    for got in (from_numpy, asap(pa.Table.from_pydict(columns)), asap(pa.Table.from_pydict(columns).to_pandas())):
        assert list(got) == list(reference)
        for name in reference:
            assert dumps(got[name]) == dumps(reference[name]), name


def test_rejects_what_the_cli_writer_rejects(asap, tmp_path):
    """A row the CLI cannot read or write as UTF-8 JSON (a lone surrogate, which the tokenizer
    would raise on) is a reject with the CLI's reason, not an exception."""
    bad = {"id": "surrogate", "kind": "math", "prompt": "p\ud800",
           "generation": "<think>\nstep one\n\nstep two\n</think>\n1"}
    _, rejected = cli_outputs(tmp_path, [bad], "fine", "--ratio", "0.5")
    [reason] = rejected.values()  # the CLI names an unreadable row by its line number
    out = asap({name: [value] for name, value in bad.items()})
    assert out[REJECT_FIELD] == [reason] and "lone surrogate" in reason


def test_all_rejected_batch_keeps_the_columns(asap):
    out = asap({"id": ["a", "b"], "prompt": ["p", None], "generation": ["no think block", "<think>\nx\n</think>\n"]})
    assert list(out) == ["id", "prompt", "generation", *OUTPUT_FIELDS["asap"], REJECT_FIELD]
    assert out[REJECT_FIELD][1] == "missing field 'prompt'" and out[REJECT_FIELD][0]
    assert all(v is None for name in OUTPUT_FIELDS["asap"] for v in out[name])
    assert asap({"id": [], "prompt": [], "generation": []})[REJECT_FIELD] == []


def test_pickles_without_the_model(asap):
    blob = pickle.dumps(asap)
    assert len(blob) < 4096  # the configuration only: the scorer loads where it runs
    clone = pickle.loads(blob)
    assert clone.config == asap.config and clone.spec == asap.spec and clone._stage is None


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "nope"}, "method must be one of"),
    ({"method": "asap", "budget": 10, "ratio": 0.5}, "not both"),
    ({"method": "asap", "budget": 0}, "budget must be"),
    ({"method": "spirit", "unit": "token"}, "unit is not an option of method 'spirit'"),
    ({"method": "tokenskip", "ratio": 0.5}, "tokenskip draws its ratio"),
    ({"method": "asap", "mode": "sideways"}, "mode must be one of"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        af.Compressor(**kwargs)
    assert "\n" not in str(info.value)


def test_method_config_matches_the_cli_defaults():
    """The configs the CLI builds from its defaults are the Compressor's defaults."""
    from asap_fast.cli import build_parser
    from asap_fast.cli.compress import method_config as cli_method_config
    from asap_fast.pipeline.compressor import method_config

    parser = build_parser()
    for method in ("spirit", "selective-context", "llmlingua2", "tokenskip"):
        args = parser.parse_args(["compress", "in.jsonl", "out.jsonl", "--method", method])
        assert cli_method_config(args) == method_config(method), method
    args = parser.parse_args(["compress", "in.jsonl", "out.jsonl", "--method", "spirit", "--budget", "300"])
    assert cli_method_config(args) == method_config("spirit", budget=300)
    # the defaults themselves: the paper's budget 4096 for asap, ratio 0.5 for the baselines
    from asap_fast.methods.common import Target
    from asap_fast.methods.tokenskip import RATIOS

    assert method_config("asap").budget == 4096 and method_config("asap", ratio=0.3).budget is None
    assert method_config("spirit").target == Target(ratio=0.5)
    assert method_config("selective-context").unit == "token"
    tokenskip = method_config("tokenskip")
    assert tokenskip.ratios == tuple(RATIOS) and tokenskip.seed == 42
    assert method_config("llmlingua2", force_tokens=["Step", ":"]).force_tokens == ("Step", ":")


@pytest.mark.ray  # a local Ray runtime: the Ray tier
def test_ray_data_map_batches_equals_asap_fine(rows, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    # Ray puts the driver's working directory on its workers' sys.path: start them outside the
    # checkout so they import the installed package (with its compiled core), not the source tree.
    monkeypatch.chdir(tmp_path)
    written, rejected = cli_outputs(tmp_path, rows, "fine", "--ratio", "0.5")
    # Arrow blocks need one set of fields per row: the row without a generation has it null
    columns = as_columns(rows)
    items = [{name: values[i] for name, values in columns.items()} for i in range(len(rows))]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items(items).map_batches(
            af.Compressor, fn_constructor_kwargs={"method": "asap", "ratio": 0.5, "threads": 1},
            concurrency=2, batch_size=4)  # the default "numpy" batch format
        out = ds.take_all()
    finally:
        ray.shutdown()
    assert len(out) == len(rows)
    assert_same_as_cli(out, written, rejected, "asap", columns)


@pytest.mark.ray  # a local Ray runtime: the Ray tier
def test_docs_ray_example_runs(tmp_path):
    """The Ray Data example of docs/python-api.md (a ```py block, which the docs test leaves out
    because a Ray runtime takes a minute to start) runs as written, from outside the checkout."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text(encoding="utf-8")
    [code] = re.findall(r"^```py\n(.*?)^```", page, re.S | re.M)
    assert "map_batches(af.Compressor" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 8 and all("tokens" in line or line.split()[1:] for line in lines), proc.stdout


def mutated_rows(cot_traces, count: int, seed: int) -> list[dict]:
    """Short real traces with random damage of the kinds corpora have: fields dropped, the thinking
    cut or never closed, empty, whitespace only or one step, the answer's code block removed, the
    kind changed, the prompt as chat messages or holding a lone surrogate, extra fields."""
    import random

    rng = random.Random(seed)
    base = sorted((r for r in cot_traces if "</think>" in r["generation"]), key=lambda r: len(r["generation"]))[:12]
    mutations = [
        lambda r: r.pop("generation"),
        lambda r: r.pop("prompt"),
        lambda r: r.pop("kind"),
        lambda r: r.update(generation=r["generation"][: rng.randrange(1, len(r["generation"]))]),
        lambda r: r.update(generation=r["generation"].replace("</think>", "")),
        lambda r: r.update(generation="<think>\n" + rng.choice(["", "  \n\n ", "one step"]) + "\n</think>\n```python\nx\n```"),
        lambda r: r.update(generation=r["generation"].replace("```", "")),
        lambda r: r.update(kind=rng.choice(["code", "math", "other"])),
        lambda r: r.update(prompt=[{"role": "system", "content": "be brief"}, {"role": "user", "content": r["prompt"]}]),
        lambda r: r.update(prompt=r["prompt"] + "\ud800"),
        lambda r: r.update(extra={"nested": [1, 2.5, None]}, score=7),
        lambda r: None,
    ]
    rows = []
    for k in range(count):
        row = {key: value for key, value in rng.choice(base).items() if key in ("kind", "prompt", "generation")}
        for mutate in rng.sample(mutations, rng.randrange(1, 3)):
            try:
                mutate(row)
            except (KeyError, TypeError):  # the other mutation dropped the field or made it a list
                pass
        rows.append({"id": f"m{k}", **row})
    return rows


@pytest.mark.parametrize("seed", [0, 1])
def test_generated_damage_is_rejected_as_the_cli_rejects_it(seed, cot_traces, asap, tmp_path):
    """Random damaged rows, called as one dict batch (a field a row lacks is null in its column):
    nothing raises, and every row is the CLI's, compressed or rejected with the CLI's reason."""
    rows = mutated_rows(cot_traces, 24, seed)
    written, rejected = cli_outputs(tmp_path, rows, "fine", "--ratio", "0.5")
    assert written and len(rejected) >= 4  # the generator makes both
    columns = as_columns(rows)
    out = asap(columns)
    output_rows = [{name: values[i] for name, values in out.items()} for i in range(len(rows))]
    for row in output_rows:
        if row["id"] in rejected or row["id"] in written:
            continue
        # a lone surrogate: the CLI's reject names the row by its line, not its id
        line = f"line:{int(row['id'][1:]) + 1}"
        assert line in rejected, row["id"]
        rejected[row["id"]] = rejected.pop(line)
    assert_same_as_cli(output_rows, written, rejected, "asap", columns)


@pytest.mark.parametrize("method, argv", [("asap", ("fine",)), ("selective-context", ("compress", "--method",
                                                                                       "selective-context"))])
def test_matched_rows_declare_their_knob_and_equal_the_cli(method, argv, rows, tmp_path):
    """With match_ratio every row records ``match_knob`` (and stage 2 its ``achieved_ratio``), declared
    like the other output columns, so a batch of rejects alone still has them."""
    datasets = pytest.importorskip("datasets")
    from asap_fast.pipeline.compressor import output_fields

    fields = output_fields(method, matched=True)
    assert "match_knob" in fields and ("achieved_ratio" in fields)
    written, rejected = cli_outputs(tmp_path, rows, argv[0], *argv[1:], "--match-ratio", "0.5")
    compressor = af.Compressor(method, match_ratio=0.5)
    inputs = set(as_columns(rows))
    mapped = datasets.Dataset.from_dict(as_columns(rows)).map(compressor, batched=True, batch_size=3)
    assert_same_as_cli(list(mapped), written, rejected, method, inputs, fields)
    only_rejects = compressor(as_columns([r for r in rows if r["id"] in rejected]))
    assert set(fields) <= set(only_rejects)
