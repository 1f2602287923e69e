#!/usr/bin/env python
"""Train the small demo scorer bundled as ``asap_fast/scorers/demo`` (a Qwen2 causal LM, few M params).

It exists so that ``asap fine`` and the tests run offline, out of the box, with surprisal that
means something: it is trained on the reasoning traces it will score, as the scorer sees them,

    text = prompt + "\\n<think>\\n" + thinking

(thinking = ``parse_trace(generation).think``; for the few traces cut off before ``</think>``,
everything after ``<think>``). It is NOT a substitute for DeepSeek-R1-Distill-Qwen-7B: it is far
too small and trained on ~2M tokens.

Steps:
  1. split the traces by id into train / held-out (sha256(id) mod 100 < heldout_pct -> held out);
  2. train a byte-level BPE tokenizer (Qwen2's pre-tokenizer regex) on the training split only;
  3. train Qwen2ForCausalLM (tied embeddings) on random windows of the concatenated training
     tokens, documents separated by <|endoftext|>;
  4. report held-out loss per token (nats) against a uniform (ln V) and a unigram model;
  5. the pivot-vs-connector analysis: first-token surprisal of held-out steps opening with
     "Wait"/"But"/"Alternatively"/"Hmm" vs "So"/"Then"/"Now";
  6. save fp16 safetensors + tokenizer + model card (README.md) into --out.

BOS: the tokenizer adds NO special token (like Qwen2's own tokenizer), so ``len(tok.encode(s))``
counts only the text's tokens (what prune_steps' budgets count). ``<|endoftext|>`` is bos, eos and
pad; in training it separates documents.

Determinism: fixed seed, fixed data order (one torch.Generator draws the windows),
``torch.use_deterministic_algorithms(True)``, a fixed number of intra-op threads (--threads).
On CPU, the same machine, torch build and thread count give the same weights; a different thread
count or CPU (different BLAS kernels / reduction order) may change the last bits and so the result.
``--time-budget`` is only a safety stop: if it fires, the run is no longer reproducible (the card
says so). Pass --steps to fix the amount of training.

The bundled model (the defaults are its settings; ~19 min of training on a shared 2-core CPU):
    python scripts/train_demo_scorer.py --out asap_fast/scorers/demo --steps 500 --time-budget 1900 \\
        --threads 1 --seq-len 1024 --batch 4 --long-seq-len 4096 --long-frac 0.2 --lr 2e-3 --warmup 30
    # then, to set the context to 16384 and evaluate the saved fp16 weights over it (2 min):
    python scripts/train_demo_scorer.py <same options> --context 16384 --eval-only
(The first command ran with the then-default --context 4096; RoPE weights do not depend on it, so a
single run with --context 16384 should train the same weights (not verified) and evaluates in fp32
before saving.)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

EOT = "<|endoftext|>"
THINK_PREFIX = "\n<think>\n"
# Qwen2's pre-tokenizer pattern: "\n\n" stays one pre-token, digits are split one by one.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PIVOTS = ("Wait", "But", "Alternatively", "Hmm")
CONNECTORS = ("So", "Then", "Now")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def load_traces(path: str | None) -> list[dict]:
    """Rows with id, prefix (prompt + "\\n<think>\\n"), think, text, complete (has </think>)."""
    import asap_fast as af
    from asap_fast.data import read_cot_traces

    rows = []
    for r in read_cot_traces(path):
        gen = r["generation"]
        try:
            think = af.parse_trace(gen, require_code=False).think
            complete = True
        except af.TraceError:
            at = gen.find("<think>")
            think = (gen[at + len("<think>"):] if at >= 0 else gen).strip()
            complete = False
        if not think:
            continue
        prefix = prompt_text(r.get("prompt")) + THINK_PREFIX
        rows.append({"id": str(r["id"]), "prefix": prefix, "think": think, "text": prefix + think,
                     "complete": complete, "kind": r.get("kind", "")})
    return rows


def prompt_text(prompt) -> str:
    """The prompt as plain text: a string as is; a chat (list of {role, content}) as its
    messages' contents joined by blank lines; None as ""."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)


def is_heldout(trace_id: str, pct: int) -> bool:
    return int(hashlib.sha256(trace_id.encode("utf-8")).hexdigest(), 16) % 100 < pct


# ------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # NFC, as Qwen2's tokenizer: transformers 5 loads this directory as Qwen2Tokenizer, which
    # installs NFC whatever tokenizer.json says, so the saved tokenizer must have it too.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=None, model_max_length=None, clean_up_tokenization_spaces=False)
    return fast


def fix_tokenizer_config(out: Path) -> None:
    """transformers 5 writes tokenizer_class "TokenizersBackend", which transformers 4 cannot load;
    "PreTrainedTokenizerFast" loads tokenizer.json verbatim on 4.x (5.x maps it to Qwen2Tokenizer,
    equivalent here: same regex, NFC, byte-level BPE), and no BOS is added by either."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------


def make_model(args, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    eot = tokenizer.convert_tokens_to_ids(EOT)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.context, rope_theta=args.rope_theta, tie_word_embeddings=True,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, use_cache=True,
        attention_dropout=0.0, initializer_range=0.02,
    )
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(config)
    return model


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL (nats) of a [B, T] batch, fp32 log-softmax."""
    logits = model(input_ids=ids[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


BUCKETS = (0, 512, 1024, 2048, 4096, 8192, 16384)


@torch.no_grad()
def heldout_nll(model, docs: list[np.ndarray], ctx: int) -> tuple[float, int, dict]:
    """Mean NLL per predicted token over the first ``ctx`` tokens of each held-out doc (one forward
    each), and the same broken down by the predicted token's position (0-512, 512-1024, ...)."""
    model.eval()
    total, count = 0.0, 0
    bucket_sum: dict[str, float] = {}
    bucket_n: dict[str, int] = {}
    for d in docs:
        w = torch.from_numpy(d[:ctx]).long()[None]
        if w.shape[1] < 2:
            continue
        logits = model(input_ids=w[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction="none")
        total += float(nll.sum())
        count += int(nll.numel())
        pos = np.arange(1, w.shape[1])
        for lo, hi in itertools.pairwise(BUCKETS):
            m = (pos >= lo) & (pos < hi)
            if m.any():
                key = f"{lo}-{hi}"
                bucket_sum[key] = bucket_sum.get(key, 0.0) + float(nll[torch.from_numpy(m)].sum())
                bucket_n[key] = bucket_n.get(key, 0) + int(m.sum())
    model.train()
    buckets = {k: {"nll": bucket_sum[k] / bucket_n[k], "tokens": bucket_n[k]} for k in bucket_sum}
    return total / max(count, 1), count, buckets


def unigram_nll(train_ids: np.ndarray, docs: list[np.ndarray], vocab: int) -> float:
    counts = np.bincount(train_ids, minlength=vocab).astype(np.float64) + 1.0  # add-one
    logp = np.log(counts / counts.sum())
    tgt = np.concatenate([d[1:] for d in docs])
    return float(-logp[tgt].mean())


# ------------------------------------------------------------------------------------------------
# pivot vs connector analysis
# ------------------------------------------------------------------------------------------------


def _direct_surprisal(model, tokenizer, prefix: str, steps: list[str]) -> list[float]:
    text = prefix + "\n\n".join(steps)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"])[None]
    ends = np.maximum.accumulate(np.array([o[1] for o in enc["offset_mapping"]]))
    starts, pos = [], len(prefix)
    for s in steps:
        starts.append(pos)
        pos += len(s) + 2
    positions = np.searchsorted(ends, np.array(starts), side="right")
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return [float("inf") if p == 0 else float(-logp[p - 1, ids[0, p]]) for p in positions]


def fit_steps(tokenizer, prefix: str, steps: list[str], max_tokens: int) -> list[str]:
    """The longest leading run of steps whose text fits in ``max_tokens`` tokens."""
    text = prefix + "\n\n".join(steps)
    enc = tokenizer(text, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return steps
    limit_char = enc["offset_mapping"][max_tokens - 1][1]  # text[:limit_char] is covered by the first max_tokens tokens
    kept, pos = [], len(prefix)
    for s in steps:
        end = pos + len(s)
        if end > limit_char - 1:  # keep one char of slack against merges at the cut
            break
        kept.append(s)
        pos = end + 2
    return kept


def opener(step: str) -> str:
    m = re.match(r"[A-Za-z]+", step)
    return m.group(0) if m else ""


def pivot_analysis(model, tokenizer, rows: list[dict], max_tokens: int, seed: int, n_boot: int = 2000) -> dict:
    import asap_fast as af

    try:
        from asap_fast.stage2.surprisal import first_token_surprisal
        engine = "asap_fast.stage2.surprisal.first_token_surprisal"
    except Exception as e:  # noqa: BLE001 - the engine is optional here
        first_token_surprisal, engine = None, f"direct (engine import failed: {type(e).__name__})"
    model.eval()
    per_trace: list[tuple[list[float], list[float], list[float]]] = []
    by_word: dict[str, list[float]] = {}
    n_steps = n_truncated = 0
    for r in rows:
        steps = af.split_steps(r["think"])
        kept = fit_steps(tokenizer, r["prefix"], steps, max_tokens)
        n_truncated += len(kept) < len(steps)
        if not kept:
            continue
        if first_token_surprisal is not None:
            sur = first_token_surprisal(model, tokenizer, r["prefix"], kept)
        else:
            sur = _direct_surprisal(model, tokenizer, r["prefix"], kept)
        piv, con, allv = [], [], []
        for s, x in zip(kept, sur):
            if not math.isfinite(x):
                continue
            w = opener(s)
            allv.append(x)
            if w in PIVOTS:
                piv.append(x)
            elif w in CONNECTORS:
                con.append(x)
            if w in PIVOTS + CONNECTORS + ("Perhaps", "Let", "Okay", "First", "The", "For"):
                by_word.setdefault(w, []).append(x)
        n_steps += len(allv)
        per_trace.append((piv, con, allv))

    piv = np.array([x for t in per_trace for x in t[0]])
    con = np.array([x for t in per_trace for x in t[1]])
    allv = np.array([x for t in per_trace for x in t[2]])

    def se(a):
        return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")

    # cluster bootstrap over traces (steps of one trace are not independent)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(per_trace), len(per_trace))
        p = [x for i in pick for x in per_trace[i][0]]
        c = [x for i in pick for x in per_trace[i][1]]
        if p and c:
            diffs.append(np.mean(p) - np.mean(c))
    diffs = np.array(diffs)
    traces_with_both = sum(1 for t in per_trace if t[0] and t[1])
    per_trace_diff = np.array([np.mean(t[0]) - np.mean(t[1]) for t in per_trace if t[0] and t[1]])
    return {
        "engine": engine,
        "traces": len(per_trace),
        "traces_truncated_to_context": int(n_truncated),
        "steps_scored": int(n_steps),
        "pivot": {"n": len(piv), "mean": float(piv.mean()), "se": se(piv), "median": float(np.median(piv))},
        "connector": {"n": len(con), "mean": float(con.mean()), "se": se(con), "median": float(np.median(con))},
        "all_steps": {"n": len(allv), "mean": float(allv.mean()), "se": se(allv), "median": float(np.median(allv))},
        "diff_mean": float(piv.mean() - con.mean()),
        "diff_bootstrap_ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
        "bootstrap": f"{n_boot} resamples of traces (cluster bootstrap), seed {seed}",
        "traces_with_both": traces_with_both,
        "traces_pivot_gt_connector": int((per_trace_diff > 0).sum()),
        "by_word": {w: {"n": len(v), "mean": float(np.mean(v))} for w, v in sorted(by_word.items(), key=lambda kv: -len(kv[1]))},
    }


# ------------------------------------------------------------------------------------------------
# model card
# ------------------------------------------------------------------------------------------------


def write_card(out: Path, args, info: dict) -> None:
    a = info["analysis"]
    bucket_rows = "\n".join(f"| {k} | {v['tokens']:,} | {v['nll']:.3f} |" for k, v in info["buckets"].items())
    words = "\n".join(f"| {w} | {v['n']} | {v['mean']:.3f} |" for w, v in a["by_word"].items())
    lo, hi = a["diff_bootstrap_ci95"]
    if lo > 0:
        verdict = "reproduces the paper's observation that pivots are more surprising than connectors"
    elif hi < 0:
        verdict = ("does NOT reproduce the paper's observation: here pivots are LESS surprising than "
                   "connectors")
    else:
        verdict = ("does not reproduce the paper's observation: the difference is not significant"
                   + (" and its sign is the opposite (pivots slightly less surprising)" if a["diff_mean"] < 0 else ""))
    card = f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [asap-fast, demo, qwen2, chain-of-thought]
---
# asap-fast demo scorer

A tiny Qwen2 causal LM bundled with `asap-fast` (`asap_fast.scorers.DEFAULT_SCORER`) so that
`asap fine`, the tests and the benchmarks run offline, out of the box, with first-token surprisal
that carries some signal. It is **a demo, not a substitute** for the paper's scorer
(DeepSeek-R1-Distill-Qwen-7B): {info['n_params'] / 1e6:.2f}M parameters trained for
{info['wall_s'] / 60:.1f} minutes on a 2-core CPU on about {info['train_tokens'] / 1e6:.2f}M tokens.
Do not use its compressions for real distillation data.

Load it with
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from asap_fast.scorers import DEFAULT_SCORER
model = AutoModelForCausalLM.from_pretrained(DEFAULT_SCORER)        # fp16 weights; use dtype=torch.float32 on CPU
tokenizer = AutoTokenizer.from_pretrained(DEFAULT_SCORER)           # fast, with offsets
```

## Architecture
`Qwen2ForCausalLM`: vocab {info['vocab']}, hidden {args.hidden}, {args.layers} layers,
{args.heads} attention heads ({args.kv_heads} KV heads), MLP {args.intermediate}, RoPE theta
{args.rope_theta:g}, tied input/output embeddings, `max_position_embeddings` = {args.context}.
{info['n_params']:,} parameters, stored as {args.save_dtype} safetensors ({info['weights_bytes'] / 1e6:.2f} MB;
whole directory {info['dir_bytes'] / 1e6:.2f} MB).

**Context.** Trained on windows of {args.seq_len} tokens{info['long_note']}; the config allows
{args.context} positions. `SurprisalScorer` (and so `asap fine`) rejects traces longer than
`max_position_embeddings` ({args.context} tokens): longer traces go to the rejects file.
Positions beyond the longest training window ({max(args.seq_len, args.long_seq_len)} tokens) rely on RoPE
extrapolation.
Held-out loss is broken down by token position below, so you can see how it holds up over the
whole context.

## Tokenizer
Byte-level BPE (`tokenizers`), vocab {info['vocab']} including the one special token `{EOT}`,
trained on the training split only, with Qwen2's pre-tokenizer regex ("\\n\\n" is one pre-token,
digits are split one by one). Offsets are exact (`trim_offsets=False`), as the surprisal engine
needs. Average {info['chars_per_token']:.2f} characters per token on the held-out traces.

**BOS: none is added.** Like Qwen2's own tokenizer, encoding adds no special token, so
`len(tokenizer.encode(text))` counts the text's tokens only (what `prune_steps` budgets count).
`{EOT}` is bos, eos and pad token; in training it separated the concatenated documents. The
surprisal engine needs no BOS: the prefix (`prompt + "\\n<think>\\n"`) always precedes the first
step.

## Data
`{info['data']}`: {info['n_rows']} reasoning traces (DeepSeek-R1, R1-Distill, QwQ, DeepCoder; code and
math). Each becomes `prompt + "\\n<think>\\n" + thinking`, the text the scorer sees
(thinking = `parse_trace(generation).think`; for the {info['n_incomplete']} traces cut off
before `</think>`, everything after `<think>`). Split by id: held out when
`sha256(id) mod 100 < {args.heldout_pct}` -> {info['n_train']} training traces
({info['train_tokens']:,} tokens), {info['n_heldout']} held-out traces ({info['heldout_tokens']:,} tokens).
Held-out ids: {', '.join(info['heldout_ids'])}.

## Training
AdamW (betas 0.9/0.95, weight decay {args.weight_decay}), peak lr {args.lr:g}, {args.warmup} warmup steps,
cosine decay to 10%, grad-norm clip 1.0, batch {args.batch} x {args.seq_len} tokens, {info['steps_done']} steps
({info['tokens_seen'] / 1e6:.2f}M tokens seen, {info['tokens_seen'] / max(info['train_tokens'], 1):.2f} epochs),
fp32 on CPU, torch intra-op threads: {args.threads}, seed {args.seed}, `torch.use_deterministic_algorithms(True)`.
Wall time {info['wall_s']:.0f} s (training {info['train_s']:.0f} s) on {info['machine']}.
{info['budget_note']}
Command: `{info['command']}`
{info.get('eval_note', '')}

## Results (nats per token)
| | loss |
|---|---|
| uniform model (ln {info['vocab']}) | {math.log(info['vocab']):.3f} |
| unigram model (training-split counts, add-one) on the same held-out tokens | {info['unigram']:.3f} |
| **demo model, held-out** (first {args.context} tokens of each held-out trace, {info['heldout_pred_tokens']:,} predicted tokens) | **{info['heldout']:.3f}** |
| demo model, training windows (mean loss of the last 20 steps) | {info['train_loss']:.3f} |

held_out_loss_nats: {info['heldout']:.4f}

Held-out loss by position of the predicted token (does it hold up over the whole context?):

| positions | tokens | nats/token |
|---|---|---|
{bucket_rows}

## Pivots vs connectors (first-token surprisal, held-out traces)
The paper's motivation (stage 2): steps that open with pivots ("Wait", "But", "Alternatively") are
less predictable than steps that open with connectors ("So", "Then"). Computed with
{a['engine']} on the {a['traces']} held-out traces (steps = `asap_fast.split_steps(think)`,
prefix = `prompt + "\\n<think>\\n"`; {a['traces_truncated_to_context']} traces cut to the leading steps
that fit in {args.context} tokens), {a['steps_scored']} steps scored.

| steps opening with | n | mean surprisal | s.e. | median |
|---|---|---|---|---|
| pivot ({', '.join(PIVOTS)}) | {a['pivot']['n']} | {a['pivot']['mean']:.3f} | {a['pivot']['se']:.3f} | {a['pivot']['median']:.3f} |
| connector ({', '.join(CONNECTORS)}) | {a['connector']['n']} | {a['connector']['mean']:.3f} | {a['connector']['se']:.3f} | {a['connector']['median']:.3f} |
| any step | {a['all_steps']['n']} | {a['all_steps']['mean']:.3f} | {a['all_steps']['se']:.3f} | {a['all_steps']['median']:.3f} |

Pivot minus connector: {a['diff_mean']:+.3f} nats, 95% interval [{a['diff_bootstrap_ci95'][0]:+.3f}, {a['diff_bootstrap_ci95'][1]:+.3f}]
({a['bootstrap']}); pivots are more surprising than connectors in {a['traces_pivot_gt_connector']} of the
{a['traces_with_both']} traces that have both. So this small model {verdict}.
Both kinds of openers are far more predictable than the average step opener: for a 4M-parameter
model, frequent words are easy whatever they announce; telling a pivot from a connector in
context is what a strong scorer adds. (The s.e. column treats steps as independent, which they are not;
the bootstrap interval resamples whole traces.)

By opening word:

| word | n | mean surprisal |
|---|---|---|
{words}

## Limitations
Tiny, trained on ~{info['train_tokens'] / 1e6:.1f}M tokens of one small corpus, held-out set of {info['n_heldout']} traces;
surprisal values are not comparable to a 7B model's. Fine for demos, CI and benchmarks of the
pipeline's speed; not for producing real compressed SFT data.
Reproduce: the command above (same torch build, CPU and thread count for bit-identical weights).
"""
    (out / "README.md").write_text(card, encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="traces JSONL or .jsonl.gz (prompt, generation, id); default: the bundled traces")
    p.add_argument("--out", default="asap_fast/scorers/demo", help="output model directory")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps")
    p.add_argument("--time-budget", type=float, default=1900.0,
                   help="safety stop for the training loop, seconds (stopping early breaks reproducibility)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (part of what makes a run reproducible)")
    p.add_argument("--heldout-pct", type=int, default=10, help="percent of trace ids held out")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=704)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--context", type=int, default=16384,
                   help="max_position_embeddings; also the evaluation window (RoPE: does not change training)")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--seq-len", type=int, default=1024, help="training window, tokens")
    p.add_argument("--long-seq-len", type=int, default=4096, help="window for the last --long-frac of the steps (0: off)")
    p.add_argument("--long-frac", type=float, default=0.2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--save-dtype", choices=["float16", "bfloat16"], default="float16")
    p.add_argument("--eval-traces", type=int, default=0, help="limit held-out traces evaluated (0: all)")
    p.add_argument("--eval-only", action="store_true",
                   help="do not train: load the model already in --out (its saved weights), set "
                        "max_position_embeddings to --context, re-run the evaluation and the analysis, rewrite "
                        "config, card and metrics (pass the training run's other options unchanged)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = load_traces(args.data)
    train_rows = [r for r in rows if not is_heldout(r["id"], args.heldout_pct)]
    held_rows = [r for r in rows if is_heldout(r["id"], args.heldout_pct)]
    if args.eval_traces:
        held_rows = held_rows[: args.eval_traces]
    print(f"{len(rows)} traces: {len(train_rows)} train, {len(held_rows)} held out", flush=True)

    if args.eval_only:
        return eval_only(args, out, rows, train_rows, held_rows, argv)

    tokenizer = train_tokenizer([r["text"] for r in train_rows], args.vocab)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    vocab = len(tokenizer)
    train_docs = [np.array(tokenizer(r["text"])["input_ids"], dtype=np.int64) for r in train_rows]
    held_docs = [np.array(tokenizer(r["text"])["input_ids"], dtype=np.int64) for r in held_rows]
    stream = np.concatenate([x for d in train_docs for x in (np.array([eot]), d)] + [np.array([eot])])
    train_tokens = int(sum(len(d) for d in train_docs))
    held_tokens = int(sum(len(d) for d in held_docs))
    chars_per_token = sum(len(r["text"]) for r in held_rows) / max(held_tokens, 1)
    print(f"tokenizer: vocab {vocab}, {train_tokens} train tokens, {held_tokens} held-out tokens, "
          f"{chars_per_token:.2f} chars/token ({time.time() - t0:.0f}s)", flush=True)

    model = make_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    gen = torch.Generator().manual_seed(args.seed)
    stream_t = torch.from_numpy(stream)
    long_from = int(args.steps * (1 - args.long_frac)) if args.long_seq_len and args.long_frac > 0 else args.steps
    model.train()
    t_train = time.time()
    losses, tokens_seen, steps_done, budget_hit = [], 0, 0, False
    for step in range(args.steps):
        if time.time() - t_train > args.time_budget:
            budget_hit = True
            break
        seq = args.seq_len if step < long_from else args.long_seq_len
        bsz = args.batch if step < long_from else max(1, args.batch * args.seq_len // args.long_seq_len)
        starts = torch.randint(0, len(stream) - seq - 1, (bsz,), generator=gen)
        batch = torch.stack([stream_t[s:s + seq + 1] for s in starts.tolist()])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        tokens_seen += bsz * seq
        steps_done = step + 1
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step:5d} seq {seq} loss {losses[-1]:.4f} lr {lr_at(step):.2e} "
                  f"{el:.0f}s ({tokens_seen / max(el, 1e-9):.0f} tok/s)", flush=True)
    train_s = time.time() - t_train

    model.eval()
    t_eval = time.time()
    heldout, n_pred, buckets = heldout_nll(model, held_docs, args.context)
    uni = unigram_nll(np.concatenate(train_docs), [d[: args.context] for d in held_docs], vocab)
    print(f"held-out nats/token: {heldout:.4f} (first {args.context} tokens of each trace, {n_pred} tokens); "
          f"uniform {math.log(vocab):.4f}; unigram {uni:.4f}; by position {json.dumps(buckets)} "
          f"({time.time() - t_eval:.0f}s)", flush=True)

    analysis = pivot_analysis(model, tokenizer, held_rows, args.context, args.seed)
    print(json.dumps({k: v for k, v in analysis.items() if k != "by_word"}, indent=1), flush=True)

    # save
    dtype = getattr(torch, args.save_dtype)
    model.config.use_cache = True
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.model_max_length = args.context
    tokenizer.save_pretrained(out)
    fix_tokenizer_config(out)
    weights_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    wall = time.time() - t0
    long_note = (f" ({args.long_seq_len}-token windows for the last {args.long_frac:.0%} of the steps)"
                 if args.long_seq_len and args.long_frac > 0 else "")
    info = {
        "n_params": n_params, "vocab": vocab, "weights_bytes": weights_bytes, "dir_bytes": 0,
        "train_tokens": train_tokens, "heldout_tokens": held_tokens, "chars_per_token": chars_per_token,
        "n_rows": len(rows), "n_train": len(train_rows), "n_heldout": len(held_rows),
        "n_incomplete": sum(not r["complete"] for r in rows), "heldout_ids": [r["id"] for r in held_rows],
        "data": os.path.basename(args.data) if args.data else "cot-traces.jsonl", "steps_done": steps_done, "tokens_seen": tokens_seen,
        "wall_s": wall, "train_s": train_s, "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
        "budget_note": ("**The time budget stopped training early: this run is not reproducible.**" if budget_hit
                        else f"All {args.steps} steps ran (the {args.time_budget:.0f} s safety budget was not hit)."),
        "command": "python scripts/train_demo_scorer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "heldout": heldout, "heldout_pred_tokens": n_pred, "buckets": buckets, "unigram": uni,
        "train_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "analysis": analysis, "long_note": long_note, "eval_note": "",
    }
    finish(out, args, info)
    print(f"saved to {out} ({info['dir_bytes'] / 1e6:.2f} MB) in {wall:.0f}s", flush=True)
    return 0


def finish(out: Path, args, info: dict) -> None:
    write_card(out, args, info)
    info["dir_bytes"] = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    write_card(out, args, info)  # again, with the directory size
    (out / "training_metrics.json").write_text(json.dumps(
        {k: v for k, v in info.items() if k not in ("heldout_ids",)}, indent=1), encoding="utf-8")


def eval_only(args, out: Path, rows, train_rows, held_rows, argv) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    prev = json.loads((out / "training_metrics.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.config.max_position_embeddings = args.context
    model.eval()
    vocab = len(tokenizer)
    train_docs = [np.array(tokenizer(r["text"])["input_ids"], dtype=np.int64) for r in train_rows]
    held_docs = [np.array(tokenizer(r["text"])["input_ids"], dtype=np.int64) for r in held_rows]
    heldout, n_pred, buckets = heldout_nll(model, held_docs, args.context)
    uni = unigram_nll(np.concatenate(train_docs), [d[: args.context] for d in held_docs], vocab)
    print(f"held-out nats/token: {heldout:.4f} (first {args.context} tokens of each trace, {n_pred} tokens); "
          f"uniform {math.log(vocab):.4f}; unigram {uni:.4f}; by position {json.dumps(buckets)} "
          f"({time.time() - t0:.0f}s)", flush=True)
    analysis = pivot_analysis(model, tokenizer, held_rows, args.context, args.seed)
    print(json.dumps({k: v for k, v in analysis.items() if k != "by_word"}, indent=1), flush=True)

    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["max_position_embeddings"] = args.context
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tcfg_path = out / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text(encoding="utf-8"))
    tcfg["model_max_length"] = args.context
    tcfg_path.write_text(json.dumps(tcfg, indent=2) + "\n", encoding="utf-8")

    info = dict(prev)
    info.update({
        "heldout_ids": [r["id"] for r in held_rows], "heldout": heldout, "heldout_pred_tokens": n_pred,
        "buckets": buckets, "unigram": uni, "analysis": analysis,
        "eval_note": (f"The evaluation below was re-run on the saved {args.save_dtype} weights (computed in fp32) "
                      f"with `max_position_embeddings` = {args.context} "
                      f"(`python scripts/train_demo_scorer.py {' '.join(sys.argv[1:] if argv is None else argv)}`, "
                      f"{time.time() - t0:.0f} s); training is unchanged."),
    })
    finish(out, args, info)
    print(f"rewrote config, card and metrics in {out} ({info['dir_bytes'] / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
