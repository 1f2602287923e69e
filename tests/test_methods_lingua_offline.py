"""LLMLingua-2 / TokenSkip without network: a classifier missing from the local cache is one line
naming --lingua-model and how to fetch it, with no connection attempted; a cached hub id loads
from its snapshot offline."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

pytest.importorskip("llmlingua")

from asap_fast.cli import main  # noqa: E402
from asap_fast.methods.llmlingua2 import DEFAULT_MODEL, LLMLingua2Compressor, resolve_classifier  # noqa: E402
from asap_fast.testing import tiny_token_classifier  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (the check must not try the hub)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args[:1]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_uncached_hub_id_is_one_line_without_network(tmp_path, no_network):
    with pytest.raises(ValueError) as info:
        LLMLingua2Compressor(DEFAULT_MODEL, device="cpu", cache_dir=str(tmp_path / "empty-cache"))
    message = str(info.value)
    assert "\n" not in message and "--lingua-model PATH" in message and "HF_HUB_OFFLINE" in message
    assert f"hf download {DEFAULT_MODEL}" in message


@pytest.mark.parametrize("bad,why", [("./no-such-xlm-roberta-large", "not a directory"),
                                     ("a/b/c-xlm-roberta-large", "not a directory")])
def test_bad_paths_are_one_line(bad, why, no_network):
    with pytest.raises(ValueError, match=why):
        resolve_classifier(bad)


def test_directory_without_config(tmp_path):
    (tmp_path / "tiny-xlm-roberta-large").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_classifier(str(tmp_path / "tiny-xlm-roberta-large"))


def test_cached_hub_id_loads_offline(tmp_path, cot_traces, no_network):
    """A hub id whose snapshot is in the cache (the layout `hf download` writes) loads from it."""
    built = tiny_token_classifier(tmp_path / "tiny-xlm-roberta-large", "xlm-roberta-large",
                                  texts=[r["generation"] for r in cot_traces[::20]])
    repo = tmp_path / "cache" / "models--someone--tiny-xlm-roberta-large"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(built, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert resolve_classifier("someone/tiny-xlm-roberta-large", cache_dir=str(tmp_path / "cache")) == str(snapshot)
    compressor = LLMLingua2Compressor("someone/tiny-xlm-roberta-large", device="cpu",
                                      cache_dir=str(tmp_path / "cache"))
    assert compressor.compress_steps(["one two three four", "five six seven"], 0.5).steps


@pytest.mark.parametrize("method", ["llmlingua2", "tokenskip"])
def test_cli_without_classifier_is_one_line(method, tmp_path, capsys, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(json.dumps({"id": "a", "kind": "math", "prompt": "p",
                                  "generation": "<think>\nx\n\ny\n</think>\nok"}) + "\n")
    assert main(["compress", str(corpus), str(tmp_path / "out.jsonl"), "--method", method, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lingua-model PATH" in err, err
