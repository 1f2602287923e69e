"""Tiny real models and tokenizers, built locally, for tests, benchmarks and bug reports.

Nothing here downloads anything: tokenizers are byte-level BPE models trained in-process (about a
second) with the ``tokenizers`` library, and models are Hugging Face causal LMs built from configs
with seeded random weights. Everything is deterministic for given arguments.

    >>> from asap_fast.testing import tiny_tokenizer, tiny_causal_lm
    >>> tok = tiny_tokenizer()                       # byte-level BPE, Qwen2 pre-tokenizer, no BOS
    >>> model = tiny_causal_lm(len(tok), arch="qwen2")
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["DEFAULT_CORPUS", "PRE_TOKENIZERS", "PeakLiveBytes", "as_foreground", "tiny_causal_lm",
           "tiny_token_classifier", "tiny_tokenizer", "trace_case"]

# The Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen pre-tokenizer regex (the one the paper's scorer uses).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRE_TOKENIZERS = ("qwen2", "gpt2", "none")

DEFAULT_CORPUS: tuple[str, ...] = (
    ("Okay, I need to solve this problem where I have to check if a given number is "
     "quasi-palindromic.\n\nLet's think about examples. The first example is 131. Adding nothing "
     "gives \"131\", which is a palindrome.\n\nWait, but how do leading zeros affect the palindrome "
     "structure? For example, if the number is 320, the digits are 3,2,0.\n\nSo the approach is: "
     "strip the trailing zeros, then check whether the rest reads the same both ways."),
    ("Hmm, let me re-read the statement. We are given n integers and must output the minimum number "
     "of operations.\n\nAlternatively, perhaps a greedy approach works: sort the array and take the "
     "smallest element first.\n\nBut wait, what if two elements are equal? Then the order does not "
     "matter.\n\nLet me test this with the second sample: n = 5, a = [3, 1, 4, 1, 5]. The answer "
     "should be 7.\n\nYes, that matches. So the code would be:"),
    ("```python\nn = int(input())\na = list(map(int, input().split()))\na.sort()\nans = 0\n"
     "for i, x in enumerate(a):\n    ans += x * (n - i)\nprint(ans)\n```\n\nThat should work. "
     "Now, edge cases: n = 1, all zeros, very large values up to 10^9."),
    ("Let $x$ be the number of apples. Then $2x + 3 = 11$, so $x = 4$.\n\nTherefore, the answer "
     "is $\\boxed{4}$.\n\nBut let me double-check: $2 \\cdot 4 + 3 = 11$. Correct.\n\nPerhaps there "
     "is another way: subtract 3 from both sides and divide by 2."),
    ("Then, for each query we binary search the prefix sums.\n\nAlternatively, we could use a "
     "Fenwick tree, but that is overkill here.\n\nSo the time complexity is O((n + q) log n), which "
     "is fine for n, q <= 2 * 10^5.\n\nThus, the final code reads the input, builds prefix sums and "
     "answers the queries."),
    ("Ünïcödé test: naïve café, 数学 and emoji 🙂 also appear in real traces.\n\n"
     "Wait — what about the em dash “quotes” and ‘single’ ones?\n\nOkay."),
)


@functools.lru_cache(maxsize=32)
def _trained_tokenizer_json(
    texts: tuple[str, ...], vocab_size: int, pre_tokenizer: str, bos: bool, eos: bool
) -> str:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre_tokenizer == "gpt2")
    if pre_tokenizer == "qwen2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"] + (["<s>"] if bos else []) + (["</s>"] if eos else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    # trim_offsets=False: offsets cover every character a token encodes (Qwen2's setting).
    steps = [processors.ByteLevel(trim_offsets=False)]
    if bos or eos:
        single = " ".join((["<s>"] if bos else []) + ["$A"] + (["</s>"] if eos else []))
        pair = " ".join((["<s>"] if bos else []) + ["$A", "$B"] + (["</s>"] if eos else []))
        ids = [(t, tokenizer.token_to_id(t)) for t in special[1:]]
        steps.append(processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids))
    tokenizer.post_processor = processors.Sequence(steps)
    return tokenizer.to_str()


def tiny_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 600,
    pre_tokenizer: str = "qwen2",
    bos: bool = False,
    eos: bool = False,
):
    """A real byte-level BPE fast tokenizer trained in-process on ``texts``.

    texts:         training texts (default: DEFAULT_CORPUS, reasoning-trace-like English, code, math
                   and some non-ASCII); every string encodes, whatever it contains (byte fallback).
    vocab_size:    target vocabulary size including the 256 byte symbols and the special tokens.
    pre_tokenizer: "qwen2" (Qwen2's split regex, as the paper's scorer), "gpt2" (GPT-2's regex) or
                   "none" (no split: BPE may merge across "\\n\\n" and across step boundaries).
    bos / eos:     add "<s>" before / "</s>" after every encoded text, like Llama-style tokenizers
                   (special tokens with offsets (0, 0)).

    Returns a ``transformers.PreTrainedTokenizerFast`` (``return_offsets_mapping`` works) with
    ``pad_token = eos_token = "<|endoftext|>"`` unless eos is set. Training is cached per argument
    set; each call returns a fresh wrapper.
    """
    from transformers import PreTrainedTokenizerFast

    if pre_tokenizer not in PRE_TOKENIZERS:
        raise ValueError(f"pre_tokenizer must be one of {PRE_TOKENIZERS}, got {pre_tokenizer!r}")
    corpus = tuple(DEFAULT_CORPUS if texts is None else texts)
    if not corpus or not all(isinstance(t, str) for t in corpus):
        raise ValueError("texts must be a non-empty iterable of str")
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + specials), got {vocab_size}")
    tokenizer_json = _trained_tokenizer_json(corpus, int(vocab_size), pre_tokenizer, bool(bos), bool(eos))
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        bos_token="<s>" if bos else None,
        eos_token="</s>" if eos else "<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )


ARCHS = ("qwen2", "llama", "gemma2")


def tiny_causal_lm(
    vocab_size: int,
    arch: str = "qwen2",
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    tie_word_embeddings: bool = False,
    head_bias: bool = False,
    max_position_embeddings: int = 4096,
    init_std: float = 0.1,
    seed: int = 0,
    dtype=None,
):
    """A Hugging Face causal LM with random weights, built from a config (no download).

    arch: "qwen2" (Qwen2ForCausalLM), "llama" (LlamaForCausalLM) or "gemma2" (Gemma2ForCausalLM,
          whose final logit soft-capping makes the LM head non-fusable).
    head_bias: replace the LM head by ``nn.Linear(hidden, vocab_size, bias=True)`` (random bias);
          incompatible with tied embeddings.
    init_std: weight init std; larger than HF's 0.02 so that next-token distributions are far from
          uniform and surprisal values are well separated (fewer near-ties in tests).
    seed: weights are a function of the arguments and the seed only (the global RNG is untouched).

    The model is returned in eval mode, on CPU, in ``dtype`` (default float32).
    """
    import torch

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if head_bias and tie_word_embeddings:
        raise ValueError("head_bias=True needs an untied head (tie_word_embeddings=False)")
    common = {
        "vocab_size": int(vocab_size),
        "hidden_size": hidden,
        "intermediate_size": intermediate or 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "initializer_range": init_std,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if arch == "qwen2":
        from transformers import Qwen2Config as Config
        from transformers import Qwen2ForCausalLM as Model

        config = Config(**common, use_sliding_window=False)
    elif arch == "llama":
        from transformers import LlamaConfig as Config
        from transformers import LlamaForCausalLM as Model

        config = Config(**common)
    else:
        from transformers import Gemma2Config as Config
        from transformers import Gemma2ForCausalLM as Model

        config = Config(**common, head_dim=hidden // heads, final_logit_softcapping=30.0,
                        attn_logit_softcapping=50.0, sliding_window=max_position_embeddings)
    # eager attention everywhere: it is the one implementation every arch (and float64) supports.
    config._attn_implementation = "eager" if arch == "gemma2" else "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(config)
        if head_bias:
            head = torch.nn.Linear(hidden, int(vocab_size), bias=True)
            torch.nn.init.normal_(head.weight, std=init_std)
            torch.nn.init.normal_(head.bias, std=1.0)
            model.lm_head = head
    model = model.to(dtype or torch.float32)
    model.eval()
    return model


CLASSIFIER_FAMILIES = ("xlm-roberta-large", "bert-base-multilingual-cased")


def tiny_token_classifier(path, family: str = "xlm-roberta-large", *, texts: Iterable[str] | None = None,
                          vocab_size: int = 1200, hidden: int = 32, seed: int = 0):
    """Save a two-label token classifier of an LLMLingua-2 family, built from a config with seeded
    random weights, to the directory ``path`` (no download); returns ``path``.

    family: "xlm-roberta-large" (XLMRobertaForTokenClassification with a SentencePiece-style
            Unigram tokenizer: "▁" word prefixes, whitespace and newlines normalised to one
            space, as XLM-R's) or "bert-base-multilingual-cased" (BertForTokenClassification with
            a WordPiece tokenizer, "##" continuations). llmlingua recognises the family from the
            path, so ``path`` must contain the family's name (checked).
    texts:  the tokenizer's training texts (default: DEFAULT_CORPUS).
    """
    from pathlib import Path

    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if family not in CLASSIFIER_FAMILIES:
        raise ValueError(f"family must be one of {CLASSIFIER_FAMILIES}, got {family!r}")
    path = Path(path)
    if family not in str(path):
        raise ValueError(f"llmlingua recognises the family by the path: {str(path)!r} must contain {family!r}")
    corpus = list(DEFAULT_CORPUS if texts is None else texts)
    if family == "xlm-roberta-large":
        from transformers import XLMRobertaConfig as Config
        from transformers import XLMRobertaForTokenClassification as Model
        from transformers import XLMRobertaTokenizerFast as Fast

        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        tok.train_from_iterator(corpus, trainer=trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False))
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
        fast = Fast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                    unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
        extra = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
    else:
        from transformers import BertConfig as Config
        from transformers import BertForTokenClassification as Model
        from transformers import BertTokenizerFast as Fast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(corpus, trainer=trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        fast = Fast(tokenizer_object=tok, do_lower_case=False, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                    cls_token="[CLS]", mask_token="[MASK]")
        extra = {"pad_token_id": 0}
    config = Config(vocab_size=len(fast), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=2 * hidden, max_position_embeddings=520, num_labels=2, **extra)
    config.architectures = [Model.__name__]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Model(config)
    model.eval()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def as_foreground() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: SIGINT back to its default, as in a process a
    terminal starts. A shell starts background jobs with SIGINT ignored and every descendant inherits
    that, so a test run from such a job (a CI script) would send Ctrl-Cs that nothing receives."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trace_case(record: dict, *, max_chars: int | None = None, max_prompt_chars: int | None = None):
    """(prefix, steps) of stage 2 for one record of the bundled traces (asap_fast.data) (or any row
    with ``generation`` and optional ``prompt``), optionally shortened to fit tiny models.

    prefix = prompt + "\\n<think>\\n" (the paper's context; a prompt given as chat messages is
    their contents joined by "\\n"; the prompt cut to its last
    ``max_prompt_chars`` characters); steps = split_steps(think), truncated to the longest run of
    leading steps whose "\\n\\n" join has at most ``max_chars`` characters (at least one step).
    Raises TraceError for a generation without <think> ... </think> or with an empty thinking.
    """
    from asap_fast.core.traces import TraceError, parse_trace, split_steps

    trace = parse_trace(record["generation"], require_code=False)
    if not trace.think:  # parse_trace accepts it, as the reference does; stage 2 has nothing to score
        raise TraceError("empty thinking between <think> and </think>")
    prompt = record.get("prompt") or ""
    if isinstance(prompt, list):  # a few records carry chat messages; their contents, in order
        prompt = "\n".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in prompt)
    if max_prompt_chars is not None:
        prompt = prompt[len(prompt) - max_prompt_chars :] if len(prompt) > max_prompt_chars else prompt
    steps = split_steps(trace.think)
    if max_chars is not None:
        total, keep = -2, 0
        for step in steps:
            total += len(step) + 2
            if total > max_chars and keep:
                break
            keep += 1
        steps = steps[:keep]
    return prompt + "\n<think>\n", steps


@functools.lru_cache(maxsize=None)
def _peak_live_bytes_class():
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class PeakLiveBytes(TorchDispatchMode):
        """Peak bytes of tensor storages alive at once among those created by aten ops inside the mode.

        Storages of ``existing`` tensors (the inputs) are not counted. A storage counts from the op
        that creates it until it is freed (torch keeps one Python object per storage, so a finalizer
        on it fires when the memory goes). Scratch memory inside a single kernel is not seen.
        """

        def __init__(self, existing=()):
            super().__init__()
            self.counted = {id(t.untyped_storage()) for t in existing}
            self.live = 0
            self.peak = 0

        def _freed(self, key: int, nbytes: int) -> None:
            self.live -= nbytes
            self.counted.discard(key)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    if id(storage) not in self.counted:
                        self.counted.add(id(storage))
                        self.live += storage.nbytes()
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(storage, self._freed, id(storage), storage.nbytes())
            return out

    return PeakLiveBytes


def __getattr__(name: str):
    if name == "PeakLiveBytes":  # keeps `import asap_fast.testing` free of torch
        return _peak_live_bytes_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
