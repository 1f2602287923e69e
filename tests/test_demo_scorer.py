"""The bundled demo scorer (asap_fast/scorers/demo): loads offline, is small, has a fast tokenizer
with offsets, and predicts held-out reasoning traces far better than chance."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import itertools

from asap_fast.scorers import DEFAULT_SCORER

MAX_BYTES = 15 * 1024 * 1024
HELDOUT_PCT = 10  # scripts/train_demo_scorer.py --heldout-pct (the bundled model's value)


def _is_heldout(trace_id: str) -> bool:
    return int(hashlib.sha256(trace_id.encode("utf-8")).hexdigest(), 16) % 100 < HELDOUT_PCT


def _prompt_text(prompt) -> str:
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_SCORER, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_SCORER, local_files_only=True)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def heldout(cot_traces):
    import asap_fast as af

    rows = []
    for r in cot_traces:
        if not _is_heldout(str(r["id"])):
            continue
        try:
            think = af.parse_trace(r["generation"], require_code=False).think
        except af.TraceError:
            continue
        if not think:  # as the training script: an empty thinking has nothing to score
            continue
        rows.append({"id": str(r["id"]), "prefix": _prompt_text(r.get("prompt")) + "\n<think>\n", "think": think})
    return rows


def test_default_scorer_is_bundled_directory():
    path = Path(DEFAULT_SCORER)
    assert isinstance(DEFAULT_SCORER, str) and path.is_absolute()
    import asap_fast.scorers

    assert path.is_dir() and path == Path(asap_fast.scorers.__file__).resolve().parent / "demo"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (path / name).is_file(), name


def test_small_on_disk():
    total = sum(f.stat().st_size for f in Path(DEFAULT_SCORER).rglob("*") if f.is_file())
    assert total < MAX_BYTES, f"{total / 1e6:.1f} MB"


def test_loads_offline_in_a_fresh_process():
    code = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from asap_fast.scorers import DEFAULT_SCORER as p\n"
        "m = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)\n"
        "t = AutoTokenizer.from_pretrained(p)\n"
        "ids = t('So the answer is 42.\\n\\nWait', return_tensors='pt').input_ids\n"
        "print(type(m).__name__, t.is_fast, ids.shape[1], m(ids).logits.shape[-1])\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False,
                         cwd=tempfile.gettempdir())  # outside the checkout: import the installed package
    assert out.returncode == 0, out.stderr[-2000:]
    name, fast, _, vocab = out.stdout.split()[-4:]
    assert name == "Qwen2ForCausalLM" and fast == "True" and int(vocab) > 1000


def test_architecture(demo):
    model, tokenizer = demo
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert cfg.vocab_size == len(tokenizer)
    assert cfg.max_position_embeddings >= 2048
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 8e6


def test_fast_tokenizer_with_offsets_and_no_bos(demo):
    _, tokenizer = demo
    assert tokenizer.is_fast
    text = "Let me check.\n\nWait, that's wrong: 12 + 30 = 42.\n\nSo the answer is 42 (ünïcödé)."
    enc = tokenizer(text, return_offsets_mapping=True)
    # no special token is added: every token covers text and the spans cover it in order, with
    # no gap (byte-level BPE: the tokens of one multi-byte character share its span)
    assert tokenizer.bos_token_id not in enc["input_ids"]
    spans = enc["offset_mapping"]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[0] <= b[0] <= a[1] <= b[1] and b[1] > b[0] for a, b in itertools.pairwise(spans))
    assert tokenizer.decode(enc["input_ids"]) == text
    # "\n\n" is its own token, so a step's first token starts exactly at the step
    starts = {s for s, _ in spans}
    assert text.index("Wait") in starts and text.index("So the") in starts
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_heldout_loss_far_below_uniform(demo, heldout):
    model, tokenizer = demo
    assert len(heldout) >= 3
    total, count = 0.0, 0
    with torch.no_grad():
        for r in heldout[:3]:
            ids = tokenizer(r["prefix"] + r["think"], return_tensors="pt").input_ids[:, :1024]
            logits = model(input_ids=ids[:, :-1]).logits.float()
            total += float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    loss = total / count
    uniform = math.log(model.config.vocab_size)
    assert loss < uniform - 3.0, (loss, uniform)  # a unigram model is ~1.9 nats below uniform


def test_first_token_surprisal_runs(demo, heldout):
    import asap_fast as af

    surprisal = pytest.importorskip("asap_fast.stage2.surprisal")
    model, tokenizer = demo
    r = heldout[0]
    steps = af.split_steps(r["think"])[:20]
    scores = surprisal.first_token_surprisal(model, tokenizer, r["prefix"], steps)
    assert len(scores) == len(steps)
    assert all(math.isfinite(x) and x >= 0 for x in scores)


def test_model_card_names_heldout_loss(demo):
    model, _ = demo
    card = (Path(DEFAULT_SCORER) / "README.md").read_text(encoding="utf-8")
    m = re.search(r"held_out_loss_nats:\s*([0-9.]+)", card)
    assert m, "model card must state held_out_loss_nats"
    assert float(m.group(1)) < math.log(model.config.vocab_size)
    assert "Qwen2ForCausalLM" in card and "Pivots vs connectors" in card
    card_ids = re.search(r"Held-out ids: (.*)\.", card).group(1).split(", ")
    assert all(_is_heldout(i) for i in card_ids)
