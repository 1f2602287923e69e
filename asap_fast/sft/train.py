"""``asap sft``: fine-tune a model on compressed traces with TRL's SFTTrainer (stage 3).

The recipe is the paper's (PAPER_DEFAULTS below; configs/ ships it per model) and the loss is on the
response only (paper Eq. 3), a deliberate difference from the reference script, which trains on
every token. How rows become token ids is in ``asap_fast.sft_data``; this module reads the config,
checks everything that can be checked before training, builds the trainer and reports.

    asap sft --config configs/sft/r1-distill-qwen-7b.yaml dataset=out/fine.jsonl output_dir=runs/q7b
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m asap_fast.cli sft --config ...

Why the data is tokenized here and handed to TRL as ``input_ids`` + ``labels`` (+ ``completion_mask``
with ``completion_only_loss=True``): every TRL release from 0.20 to 1.x uses a ``labels`` column as
is (and applies a ``completion_mask`` under completion_only_loss), whereas its own ``messages`` and
prompt-completion paths differ between releases and, for the R1 template, would render assistant
turns without their thinking. It also makes the length filter exact: samples longer than
``max_length`` are dropped, counted and reported before training, so TRL's truncation never fires.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asap_fast.sft.data import (
    PreparedData,
    ensure_chat_template,
    iter_messages,
    prepare_examples,
)

__all__ = [
    "ASAP_KEYS",
    "LORA_DEFAULTS",
    "PAPER_DEFAULTS",
    "SFTConfigError",
    "build_trainer",
    "load_config",
    "run_sft",
]

# The paper's recipe (PAPER.md, "Stage 3: SFT"), under every config: a YAML that names only the model,
# the dataset and output_dir trains exactly as the paper did. learning_rate is the Qwen-7B value;
# Llama-8B uses 2e-5 (configs/sft/r1-distill-llama-8b.yaml).
PAPER_DEFAULTS: dict[str, Any] = {
    "bf16": True,
    "num_train_epochs": 10,
    "learning_rate": 4e-5,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 16,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
    "warmup_ratio": 0.03,
    "max_grad_norm": 0.2,
    "max_length": 16384,
    "gradient_checkpointing": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "seed": 42,
    # not training hyper-parameters: the reference's logging and saving, and no tracker by default
    "logging_steps": 10,
    "save_strategy": "epoch",
    "report_to": "none",
}

# Keys of ours (everything else must be an SFTConfig / TrainingArguments field).
ASAP_KEYS: dict[str, str] = {
    "model_name_or_path": "local directory (or Hub id) of the model to fine-tune; its tokenizer is used",
    "dataset": "the `asap fine` output: .jsonl, .jsonl.gz, .parquet or a datasets save_to_disk directory",
    "messages_field": "the field holding the chat messages (default: messages)",
    "chat_template": "'auto' (the tokenizer's own, R1's when it has none), 'r1', or a Jinja file",
    "lora": "optional LoRA (peft): {r, alpha, dropout, target_modules}",
    "global_batch_size": "optional: sets gradient_accumulation_steps = this / (per-device batch x processes)",
    "warmup_ratio": "warmup as a fraction of all steps (mapped to warmup_steps where transformers has no warmup_ratio)",
    "max_seq_length": "alias of max_length (the reference script's name)",
    "attn_implementation": "model attention backend (eager, sdpa, flash_attention_2, ...), put in model_init_kwargs",
}

LORA_DEFAULTS: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}

# TRL options that would undo what this driver does (its own tokenization and response-only loss).
_FORBIDDEN = {
    "chat_template_path": "use `chat_template` (applied before tokenization; trl's would come too late)",
    "assistant_only_loss": "the response-only loss is built in (labels are -100 on the prompt)",
    "formatting_func": "not supported",
}


_RENAMED = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


class SFTConfigError(ValueError):
    """Bad config, data or paths, found before training starts (a one-line message)."""


# ---------------------------------------------------------------------------------------------
# Config


def _sft_config_class():
    try:
        from trl import SFTConfig
    except ImportError as e:
        raise SFTConfigError(f"asap sft needs trl, datasets and accelerate: pip install 'asap-fast[sft]' ({e})") from None
    return SFTConfig


def _trainer_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(_sft_config_class()) if f.init}


def _set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = cfg
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise SFTConfigError(f"override {dotted}: {key!r} is {child!r}, not a mapping")
        node = child
    node[keys[-1]] = value


def _yaml_loader():
    """yaml.SafeLoader with YAML 1.2 scalars: ``1e-5`` is a float (1.1 reads a string) and only
    true/false are booleans (1.1 reads ``save_strategy: no`` as false)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_YAML_BOOL, _YAML_FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(_YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    Loader.add_implicit_resolver(
        _YAML_FLOAT,
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.VERBOSE,
        ),
        list("-+0123456789."),
    )
    return Loader


_YAML_BOOL = "tag:yaml.org,2002:bool"
_YAML_FLOAT = "tag:yaml.org,2002:float"


def yaml_load(text: str):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["key=value", "lora.r=8"]`` -> nested dict; values parsed as YAML 1.2 (1e-5, true, null, [..])."""
    import yaml

    out: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SFTConfigError(f"override {item!r} is not KEY=VALUE")
        try:
            value = yaml_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise SFTConfigError(f"override {item!r}: value is not YAML ({str(e).splitlines()[0]})") from None
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "lr_scheduler_kwargs":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (), *, defaults: bool = True) -> dict:
    """The resolved config: PAPER_DEFAULTS, then the YAML file, then ``key=value`` overrides.

    Checks that every key is known (an SFTConfig / TrainingArguments field or one of ASAP_KEYS) and
    that model_name_or_path, dataset and output_dir are set; raises SFTConfigError otherwise.
    """
    import yaml

    user: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SFTConfigError(f"config not found: {path}")
        try:
            user = yaml_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SFTConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(user, dict):
            raise SFTConfigError(f"config {path} must be a YAML mapping, got {type(user).__name__}")
    user = _merge(user, parse_overrides(overrides))
    cfg = _merge(PAPER_DEFAULTS if defaults else {}, user)
    if "warmup_steps" in user and "warmup_ratio" not in user:
        cfg.pop("warmup_ratio", None)  # the user's warmup replaces the paper's
    if "max_seq_length" in cfg:
        if "max_seq_length" in _trainer_fields():
            pass  # an old trl that still calls it that
        elif "max_length" in user:
            raise SFTConfigError("set max_length or max_seq_length, not both")
        else:
            cfg["max_length"] = cfg.pop("max_seq_length")
    check_keys(cfg)
    missing = [k for k in ("model_name_or_path", "dataset", "output_dir") if cfg.get(k) in (None, "")]
    if missing:
        raise SFTConfigError(f"config must set {', '.join(missing)}")
    return cfg


def check_keys(cfg: dict) -> None:
    known = _trainer_fields() | set(ASAP_KEYS)
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise SFTConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''}: {', '.join(hints)}; keys are trl SFTConfig / "
            f"transformers TrainingArguments fields or {', '.join(sorted(ASAP_KEYS))}"
        )
    for key, why in _FORBIDDEN.items():
        if cfg.get(key):
            raise SFTConfigError(f"{key} is not supported by asap sft: {why}")
    if cfg.get("completion_only_loss") is False:
        raise SFTConfigError("completion_only_loss: false is not supported: asap sft trains on the response only")
    lora = cfg.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            raise SFTConfigError(f"lora must be a mapping {{r, alpha, dropout, target_modules}}, got {lora!r}")
        bad = sorted(set(lora) - set(LORA_DEFAULTS))
        if bad:
            raise SFTConfigError(f"unknown lora key(s): {', '.join(bad)}; expected {', '.join(LORA_DEFAULTS)}")


def _accepts(hint, value) -> bool | None:
    """Whether ``value`` fits a simple type hint; None when the hint is not simple enough to say."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_accepts(arg, value) for arg in typing.get_args(hint)]
        return True if True in verdicts else None if None in verdicts else False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is list or origin is list:
        return isinstance(value, list)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, (str, hint))
    return None


def _type_hints(config_class) -> dict:
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the checking to the class
        return {}


def _check_types(config_class, kwargs: dict) -> None:
    # TrainingArguments does not check types; a string epoch count would only fail mid-setup
    hints = _type_hints(config_class)
    for key, value in kwargs.items():
        if key in hints and key != "resume_from_checkpoint" and _accepts(hints[key], value) is False:
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise SFTConfigError(f"{key} must be {expected}, got {value!r}")


def build_sft_args(cfg: dict):
    """The trl SFTConfig for a resolved config (SFTConfigError on a bad value)."""
    SFTConfig = _sft_config_class()
    fields = _trainer_fields()
    kwargs = {k: v for k, v in cfg.items() if k in fields}
    for old, new in _RENAMED.items():
        # transformers 5.x renamed these (the old names warn); the config keeps the portable old names
        if old in kwargs and new in fields:
            value = kwargs.pop(old)
            kwargs.setdefault(new, value)
    if "warmup_ratio" in cfg and "warmup_ratio" not in fields:
        # transformers 5 folded warmup_ratio into warmup_steps (a float in [0, 1) is a ratio)
        ratio = cfg["warmup_ratio"]
        if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise SFTConfigError(f"warmup_ratio must be a number in [0, 1), got {ratio!r}")
        if cfg.get("warmup_steps"):
            raise SFTConfigError("set warmup_ratio or warmup_steps, not both")
        kwargs["warmup_steps"] = float(ratio)
    if cfg.get("attn_implementation"):
        kwargs["model_init_kwargs"] = {**(cfg.get("model_init_kwargs") or {}), "attn_implementation": cfg["attn_implementation"]}
    kwargs["completion_only_loss"] = True
    if "include_num_input_tokens_seen" in fields and "include_num_input_tokens_seen" not in cfg:
        # "non_padding" where supported (transformers >= 4.56); older ones take a bool and count padding too
        hint = _type_hints(SFTConfig).get("include_num_input_tokens_seen", bool)
        kwargs["include_num_input_tokens_seen"] = "non_padding" if _accepts(hint, "non_padding") else True
    if cfg.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        raise SFTConfigError("use_liger_kernel: true needs the liger-kernel package (pip install liger-kernel)")
    _check_types(SFTConfig, kwargs)
    try:
        args = SFTConfig(**kwargs)
    except (TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "bf16" in first and not kwargs.get("use_cpu"):
            first += " (without a GPU: bf16=false)"
        raise SFTConfigError(f"invalid training config: {first}") from None
    if cfg.get("global_batch_size") is not None:
        total = cfg["global_batch_size"]
        per_step = args.per_device_train_batch_size * max(1, args.world_size)
        if not isinstance(total, int) or total <= 0 or total % per_step:
            raise SFTConfigError(
                f"global_batch_size={total!r} is not a positive multiple of per_device_train_batch_size x processes "
                f"= {per_step}"
            )
        args.gradient_accumulation_steps = total // per_step
    return args


# ---------------------------------------------------------------------------------------------
# Model, tokenizer, data


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_model_path(name: Any) -> str:
    """A local model directory (with config.json), or a Hub id; SFTConfigError for a missing path."""
    if not isinstance(name, str) or not name.strip():
        raise SFTConfigError(f"model_name_or_path must be a path or a Hub id, got {name!r}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SFTConfigError(f"model_name_or_path {path} is not a model directory (no config.json)")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            # transformers 5 would build an empty tokenizer from config.json alone
            raise SFTConfigError(f"model_name_or_path {path} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])})")
        return str(path)
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name
    if looks_local:
        raise SFTConfigError(f"model not found: {name}")
    return name


def load_tokenizer(model_path: str, cfg: dict, args):
    """(tokenizer, the model's vocabulary size or None), with EOS and an in-vocabulary pad set."""
    from transformers import AutoConfig, AutoTokenizer

    kwargs = {"trust_remote_code": bool(cfg.get("trust_remote_code", False))}
    try:
        config = AutoConfig.from_pretrained(model_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_path, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SFTConfigError(f"could not load the model config or tokenizer from {model_path}: {first}") from None
    if args.eos_token is not None:
        if args.eos_token not in tokenizer.get_vocab():
            raise SFTConfigError(f"eos_token {args.eos_token!r} is not in the tokenizer's vocabulary")
        tokenizer.eos_token = args.eos_token
    if tokenizer.eos_token_id is None:
        raise SFTConfigError(f"the tokenizer of {model_path} has no EOS token; set eos_token in the config")
    vocab = _model_vocab_size(config)
    if vocab is not None and tokenizer.eos_token_id >= vocab:
        raise SFTConfigError(f"the tokenizer's EOS id {tokenizer.eos_token_id} is outside the model's vocabulary of "
                             f"{vocab}: tokenizer and model do not match (resize the model's embeddings first)")
    if tokenizer.pad_token is None or (vocab is not None and tokenizer.pad_token_id >= vocab):
        if tokenizer.pad_token is not None:  # a <pad> added to the tokenizer, the embedding never resized
            print(f"asap sft: the tokenizer's pad id {tokenizer.pad_token_id} is outside the model's vocabulary of "
                  f"{vocab}; padding with EOS instead (padded positions carry no loss)", file=sys.stderr)
        tokenizer.pad_token = tokenizer.eos_token  # padded positions get label -100 whatever the pad id
    return tokenizer, vocab


def _model_vocab_size(config) -> int | None:
    getter = getattr(config, "get_text_config", None)
    text = getter() if callable(getter) else config
    size = getattr(text, "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def check_token_ids(prepared, vocab: int | None) -> None:
    """A token id the model's embedding does not have is a one-line error naming both sizes
    (not an IndexError deep in the forward pass)."""
    if vocab is None:
        return
    for number, example in enumerate(prepared.examples, 1):
        top = max(example.input_ids, default=-1)
        if top >= vocab:
            raise SFTConfigError(f"training sample {number} has token id {top}, but the model's vocabulary has {vocab} "
                                 f"entries: tokenizer and model do not match (resize the model's embeddings "
                                 f"or use the model's own tokenizer)")


def prepare_data(cfg: dict, tokenizer, max_length: int | None) -> PreparedData:
    """Read and encode the dataset; SFTConfigError on bad rows, an empty set, or nothing that fits."""
    dataset = cfg["dataset"]
    if not Path(dataset).exists():
        raise SFTConfigError(f"dataset not found: {dataset}")
    try:
        prepared = prepare_examples(
            iter_messages(dataset, cfg.get("messages_field") or "messages"), tokenizer, max_length=max_length
        )
    except (ValueError, OSError) as e:  # also json/arrow read errors
        raise SFTConfigError(str(e).strip().splitlines()[0]) from None
    if prepared.samples_total == 0:
        raise SFTConfigError(f"dataset {dataset} has no rows")
    if not prepared.examples:
        raise SFTConfigError(
            f"all {prepared.samples_total} samples of {dataset} are too long for max_length={max_length} tokens "
            f"(kept: fewer than max_length counting the tokenizer's BOS once more, the reference's rule; "
            f"the longest has {prepared.longest_dropped})"
        )
    return prepared


def _lora_config(cfg: dict):
    lora = cfg.get("lora")
    if lora is None:
        return None
    if importlib.util.find_spec("peft") is None:
        raise SFTConfigError("lora needs the peft package (pip install peft)")
    from peft import LoraConfig

    opts = {**LORA_DEFAULTS, **lora}
    try:
        return LoraConfig(
            r=int(opts["r"]),
            lora_alpha=opts["alpha"],
            lora_dropout=float(opts["dropout"]),
            target_modules=opts["target_modules"],
            task_type="CAUSAL_LM",
        )
    except (TypeError, ValueError) as e:
        raise SFTConfigError(f"invalid lora config: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------
# Trainer


def _step_timer_class():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (data loading, forward/backward of all micro-batches, step)."""

        def __init__(self):
            self.durations: list[float] = []
            self._last = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self._last is not None:
                self.durations.append(now - self._last)
            self._last = now

    return StepTimer


@dataclasses.dataclass
class SFTRun:
    """Everything ``build_trainer`` set up: the trainer and what went into it."""

    trainer: Any
    config: dict
    prepared: PreparedData
    chat_template: str
    step_timer: Any


def build_trainer(cfg: dict) -> SFTRun:
    """Check everything, encode the data, and build the SFTTrainer (loads the model). No training yet."""
    args = build_sft_args(cfg)
    model_path = resolve_model_path(cfg["model_name_or_path"])
    peft_config = _lora_config(cfg)
    tokenizer, vocab = load_tokenizer(model_path, cfg, args)
    try:
        template = ensure_chat_template(tokenizer, cfg.get("chat_template") or "auto")
    except FileNotFoundError as e:
        raise SFTConfigError(str(e)) from None
    prepared = prepare_data(cfg, tokenizer, args.max_length)
    check_token_ids(prepared, vocab)

    from trl import SFTTrainer

    timer = _step_timer_class()()
    try:
        trainer = SFTTrainer(
            model=model_path,
            args=args,
            train_dataset=prepared.to_dataset(),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[timer],
        )
    except OSError as e:  # weights missing or unreadable
        raise SFTConfigError(f"could not load the model from {model_path}: {str(e).strip().splitlines()[0]}") from None
    return SFTRun(trainer=trainer, config=cfg, prepared=prepared, chat_template=template, step_timer=timer)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # optional packages
            continue
    return out


def summarize(run: SFTRun, train_runtime: float) -> dict:
    trainer, prepared = run.trainer, run.prepared
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    durations = run.step_timer.durations
    tokens_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    exact = tokens_seen > 0
    if not exact:  # transformers without token counting: the dataset's tokens times the epochs run
        tokens_seen = round(prepared.tokens * (state.epoch or 0))
    stats = prepared.stats()
    return {
        "model_name_or_path": run.config["model_name_or_path"],
        "dataset": str(run.config["dataset"]),
        "output_dir": str(trainer.args.output_dir),
        "chat_template": run.chat_template,
        "lora": run.config.get("lora") is not None,
        "samples_total": stats["samples_total"],
        "samples_used": stats["samples_used"],
        "samples_dropped_too_long": stats["dropped_too_long"],
        "prompts_unwrapped": stats["prompts_unwrapped"],
        "max_length": stats["max_length"],
        "longest_dropped": stats["longest_dropped"],
        "dropped_ids_first": stats["dropped_ids"],
        "dataset_tokens": stats["tokens"],
        "dataset_response_tokens": stats["response_tokens"],
        "tokens_per_sample_mean": stats["tokens_per_sample_mean"],
        "tokens_per_sample_max": stats["tokens_per_sample_max"],
        "processes": trainer.args.world_size,
        "global_batch_size": trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size,
        "global_steps": state.global_step,
        "epochs": state.epoch,
        "train_runtime_s": train_runtime,
        "time_per_step_s": (sum(durations) / len(durations)) if durations else None,
        "time_per_step_s_median": statistics.median(durations) if durations else None,
        "tokens_trained": tokens_seen,
        "tokens_trained_exact": exact,
        "tokens_per_second": tokens_seen / train_runtime if train_runtime > 0 else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "versions": _versions(),
    }


def format_summary(summary: dict) -> str:
    def num(x, fmt="{:.4g}"):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)

    estimated = "" if summary["tokens_trained_exact"] else " (estimated)"
    lines = [
        (
            f"asap sft: {summary['samples_used']}/{summary['samples_total']} samples used, "
            f"{summary['samples_dropped_too_long']} dropped (too long for max_length={summary['max_length']})"
        ),
        (
            f"  tokens: {summary['dataset_tokens']} per epoch ({summary['dataset_response_tokens']} with loss), "
            f"{num(summary['tokens_per_sample_mean'], '{:.1f}')} per sample; {summary['tokens_trained']} trained"
            f"{estimated}"
        ),
        (
            f"  steps: {summary['global_steps']} ({num(summary['epochs'], '{:.2f}')} epochs, global batch "
            f"{summary['global_batch_size']} on {summary['processes']} process(es)), "
            f"{num(summary['time_per_step_s'])} s/step (median {num(summary['time_per_step_s_median'])}), "
            f"{num(summary['tokens_per_second'], '{:.1f}')} tokens/s"
        ),
        (
            f"  loss: {num(summary['first_loss'])} -> {num(summary['last_loss'])}; "
            f"model, tokenizer, trainer_state.json and sft_summary.json in {summary['output_dir']}"
        ),
    ]
    return "\n".join(lines)


def run_sft(cfg: dict, *, quiet: bool = False) -> dict:
    """Train with a resolved config (``load_config``); save model, tokenizer, trainer_state.json and
    sft_summary.json to output_dir; return the summary (computed on every process, written by the
    main one)."""
    run = build_trainer(cfg)
    trainer = run.trainer
    main_process = trainer.is_world_process_zero()
    if main_process and not quiet:
        p = run.prepared
        print(
            f"asap sft: {p.samples_used}/{p.samples_total} samples fit max_length={p.max_length} "
            f"({p.dropped_too_long} dropped), {p.tokens} tokens, chat template: {run.chat_template}"
            + (f"; {p.prompts_unwrapped} prompts held a rendered chat template (user content kept)"
               if p.prompts_unwrapped else ""),
            file=sys.stderr,
        )
    resume = cfg.get("resume_from_checkpoint")
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    runtime = float(output.metrics.get("train_runtime") or (time.perf_counter() - start))
    trainer.save_model(trainer.args.output_dir)
    trainer.save_state()  # output_dir/trainer_state.json, with the loss history
    summary = summarize(run, runtime)
    if main_process:
        out = Path(trainer.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        import yaml

        (out / "asap_sft_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True), encoding="utf-8")
        if not quiet:
            print(format_summary(summary), file=sys.stderr)
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.accelerator.wait_for_everyone()
        trainer.end()
    return summary
