"""``asap sft``: config, data encoding (response-only labels), length dropping, bad inputs, and real
training runs of a tiny model on CPU through trl's SFTTrainer.

The model and tokenizer are built in-process (asap_fast.testing) and saved to disk, so every run
goes through the real ``from_pretrained`` path. The tokenizer carries the R1 special tokens and no
chat template, so the driver sets the R1 template, as it does for any template-less tokenizer.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")
pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

from asap_fast.cli import main as asap_main
from asap_fast.sft import train as sft
from asap_fast.sft.data import (
    R1_CHAT_TEMPLATE,
    encode_messages,
    iter_messages,
    prepare_examples,
    split_prompt_completion,
)
from asap_fast.testing import tiny_causal_lm, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"

# Small and fast on 2 CPU cores; every other setting is the paper's default.
FAST = [
    "bf16=false",
    "save_strategy=no",
    "logging_steps=1",
    "warmup_ratio=0",
    "dataloader_pin_memory=false",
    "gradient_accumulation_steps=1",
]


def make_rows(n: int, *, vary_length: bool = False) -> list[dict]:
    """Rows as `asap fine` writes them (plus fields a real corpus row keeps, Infinity included)."""
    rows = []
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        steps = [f"We need {a} + {b}.", f"Adding gives {a + b}."]
        if vary_length:
            steps += [f"Check: {a + b} - {b} = {a}."] * i
        pruned = "\n\n".join(steps)
        answer = f"The sum is printed.\n```python\nprint({a} + {b})\n```"
        prompt = f"Add {a} and {b}, then print the sum."
        rows.append(
            {
                "id": f"r{i}",
                "prompt": prompt,
                "step_surprisal": [float("inf"), 1.5],
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": "<think>\n" + pruned + "\n</think>\n" + answer},
                ],
            }
        )
    return rows


def r1_tokenizer(rows: list[dict]):
    texts = [m["content"] for r in rows for m in r["messages"]]
    tok = tiny_tokenizer(texts, vocab_size=500)
    tok.add_tokens([BOS, EOS, USER, ASSISTANT], special_tokens=True)
    tok.add_tokens(["<think>", "</think>"])
    tok.bos_token, tok.eos_token = BOS, EOS
    return tok


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")  # writes Infinity, as the corpus commands do
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    rows = make_rows(8)
    long_rows = make_rows(12, vary_length=True)
    tok = r1_tokenizer(rows + long_rows)
    model = tiny_causal_lm(len(tok), hidden=48, intermediate=96, seed=1)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {
        "root": root,
        "rows": rows,
        "long_rows": long_rows,
        "model": root / "model",
        "data": write_jsonl(root / "data.jsonl", rows),
        "long_data": write_jsonl(root / "long.jsonl", long_rows),
    }


def base(ws, out: Path, *extra: str) -> list[str]:
    overrides = [f"model_name_or_path={ws['model']}", f"dataset={ws['data']}", f"output_dir={out}", *FAST, *extra]
    if not torch.cuda.is_available():
        overrides.append("use_cpu=true")
    return overrides


def load_tok(ws):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ws["model"])
    tok.chat_template = R1_CHAT_TEMPLATE
    return tok


# ---------------------------------------------------------------------------------------------
# Real training


def test_training_loss_falls_and_saved_model_loads(workspace, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    steps = 12
    cfg = sft.load_config(None, base(workspace, out, f"max_steps={steps}", "learning_rate=5e-3",
                                     "per_device_train_batch_size=8"))
    assert cfg["gradient_checkpointing"] is True  # the paper's setting stays on
    summary = sft.run_sft(cfg, quiet=True)

    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    print("loss history:", losses)
    assert len(losses) == steps
    assert losses[-1] < 0.5 * losses[0]
    assert summary["first_loss"] == losses[0] and summary["last_loss"] == losses[-1]

    # the report: every sample used; one step = the whole dataset, so tokens trained are exact
    assert summary["samples_total"] == summary["samples_used"] == 8
    assert summary["samples_dropped_too_long"] == 0
    assert summary["global_steps"] == steps
    assert summary["tokens_trained_exact"] is True
    assert summary["tokens_trained"] == steps * summary["dataset_tokens"]
    assert 0 < summary["dataset_response_tokens"] < summary["dataset_tokens"]
    assert summary["time_per_step_s"] > 0 and summary["tokens_per_second"] > 0
    assert json.loads((out / "sft_summary.json").read_text()) == json.loads(json.dumps(summary))

    # model and tokenizer load from output_dir; the tokenizer keeps the R1 template it was trained with
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == R1_CHAT_TEMPLATE
    trained = AutoModelForCausalLM.from_pretrained(out).eval()
    initial = AutoModelForCausalLM.from_pretrained(workspace["model"]).eval()

    def response_loss(model):
        ex = encode_messages(workspace["rows"][0]["messages"], tok)
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        with torch.no_grad():
            return model(input_ids=ids, labels=labels).loss.item()

    assert response_loss(trained) < 0.5 * response_loss(initial)


def test_prompt_tokens_carry_no_loss_in_the_trainer_pipeline(workspace, tmp_path):
    """labels are -100 exactly on the prompt, in the batches the trainer itself builds, and the
    trainer's loss equals cross-entropy over the response tokens only."""
    run = sft.build_trainer(sft.load_config(None, base(workspace, tmp_path / "o", "per_device_train_batch_size=3")))
    trainer, tok = run.trainer, run.trainer.processing_class
    assert run.chat_template == "r1"
    batch = next(iter(trainer.get_train_dataloader()))
    by_prompt = {r["messages"][0]["content"]: r for r in workspace["rows"]}

    assert batch["input_ids"].shape[0] == 3
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: padding is covered too
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        k = int((labels[:n] == -100).sum())
        assert bool((labels[:k] == -100).all()), "the masked tokens are a prefix"
        assert bool((labels[k:n] == ids[k:n]).all()), "every response token is trained"
        assert bool((labels[n:] == -100).all()), "padding carries no loss"
        prompt_text, response_text = tok.decode(ids[:k]), tok.decode(ids[k:n])
        row = by_prompt[prompt_text[len(BOS + USER) : -len(ASSISTANT + "<think>\n")]]
        user, assistant = row["messages"][0]["content"], row["messages"][1]["content"]
        # the paper's format, split exactly after "<｜Assistant｜><think>\n"
        assert prompt_text == f"{BOS}{USER}{user}{ASSISTANT}<think>\n"
        assert prompt_text + response_text == f"{BOS}{USER}{user}{ASSISTANT}{assistant}{EOS}"
        assert k == len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        assert int(ids[n - 1]) == tok.eos_token_id and int(labels[n - 1]) == tok.eos_token_id

    model = trainer.model.eval()
    batch = {k: v.to(model.device) for k, v in batch.items()}
    with torch.no_grad():
        trainer_loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    ce = torch.nn.functional.cross_entropy
    flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    response_only = ce(flat_logits, batch["labels"][:, 1:].reshape(-1), ignore_index=-100).item()
    all_tokens = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with_prompt = ce(flat_logits, all_tokens[:, 1:].reshape(-1), ignore_index=-100).item()
    print(f"trainer loss {trainer_loss:.6f}, response-only CE {response_only:.6f}, all-token CE {with_prompt:.6f}")
    assert math.isclose(trainer_loss, response_only, rel_tol=1e-4)
    # the random model's all-token loss is near the response-only one; far apart on this scale all the same
    assert abs(trainer_loss - with_prompt) > 1e-3 > 10 * abs(trainer_loss - response_only)


def test_lora_run_saves_a_loadable_adapter(workspace, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cfg = sft.load_config(None, base(workspace, out, "max_steps=2", "learning_rate=1e-3", "gradient_checkpointing=false",
                                     "lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"))
    summary = sft.run_sft(cfg, quiet=True)
    assert summary["lora"] is True and summary["global_steps"] == 2
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    model = AutoModelForCausalLM.from_pretrained(out)  # base + adapter through transformers' peft integration
    assert any("lora_A" in name for name, _ in model.named_parameters())


@pytest.mark.slow  # two training processes
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(workspace, tmp_path):
    """The accelerate/torchrun path: 2 CPU processes with the same global batch reproduce the
    1-process loss history, and only the main process writes the report."""
    common = ["max_steps=3", "learning_rate=5e-3", "global_batch_size=4", "per_device_train_batch_size=2",
              "gradient_checkpointing=false", "use_cpu=true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    histories, tokens = {}, {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        config = tmp_path / "c.yaml"
        config.write_text("", encoding="utf-8")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "asap_fast.cli", "sft", "--config", str(config), *base(workspace, out, *common)]
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.count("asap sft: 8/8 samples used") == 1
        summary = json.loads((out / "sft_summary.json").read_text())
        assert summary["processes"] == procs and summary["global_batch_size"] == 4
        tokens[procs] = summary["tokens_trained"]  # gathered over both ranks
        histories[procs] = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
                            if "loss" in e]
    print("1 process:", histories[1], "2 processes:", histories[2])
    assert histories[2] == pytest.approx(histories[1], rel=1e-3)
    assert tokens[1] == tokens[2] > 0


# ---------------------------------------------------------------------------------------------
# Data


def test_length_drop_counting_is_exact(workspace, tmp_path):
    tok = load_tok(workspace)
    rows = workspace["long_rows"]
    lengths = {r["id"]: len(encode_messages(r["messages"], tok).input_ids) for r in rows}
    # The reference keeps a sample when the length it measures is below the limit, strictly; it
    # measures the templated text with the tokenizer's default special tokens added once more (this
    # tokenizer adds none, so its count is ours): a sample exactly at the limit is dropped.
    assert len(tok("x")["input_ids"]) == len(tok("x", add_special_tokens=False)["input_ids"])
    limit = sorted(lengths.values())[len(lengths) // 2]
    expect_kept = sorted(n for n in lengths.values() if n < limit)
    expect_dropped = [i for i, n in lengths.items() if n >= limit]
    assert expect_dropped and len(set(lengths.values())) == len(lengths)

    prepared = prepare_examples(((r["id"], r["messages"]) for r in rows), tok, max_length=limit)
    assert prepared.samples_total == len(rows)
    assert prepared.dropped_too_long == len(expect_dropped)
    assert prepared.dropped_ids == expect_dropped
    assert prepared.longest_dropped == max(lengths.values())
    assert sorted(len(e.input_ids) for e in prepared.examples) == expect_kept

    # through the trainer: the kept samples arrive whole (no truncation, nothing else dropped)
    run = sft.build_trainer(sft.load_config(None, base(workspace, tmp_path / "o", f"dataset={workspace['long_data']}",
                                                       f"max_length={limit}")))
    assert sorted(len(ids) for ids in run.trainer.train_dataset["input_ids"]) == expect_kept
    assert run.prepared.dropped_too_long == len(expect_dropped)


def test_length_filter_counts_the_references_extra_bos():
    """R1's tokenizer adds a BOS to every text; the reference tokenizes the templated text (which
    already starts with BOS) that way, so its count is ours + 1, and it keeps count < max_length."""
    from asap_fast.sft.data import default_special_tokens, keeps_sample

    with_bos = tiny_tokenizer(bos=True)
    assert default_special_tokens(with_bos) == 1 and default_special_tokens(tiny_tokenizer()) == 0
    assert [keeps_sample(n, 100, 1) for n in (97, 98, 99, 100)] == [True, True, False, False]
    assert [keeps_sample(n, 100, 0) for n in (98, 99, 100)] == [True, True, False]
    assert keeps_sample(10**9, None, 1)


def test_prompt_completion_split_for_other_templates(workspace):
    tok = load_tok(workspace)
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok.chat_template = chatml
    msgs = workspace["rows"][0]["messages"]
    prompt, completion = split_prompt_completion(msgs, tok)
    # "<think>\n" moves to the prompt side, where evaluation puts it
    assert prompt == f"<|im_start|>user\n{msgs[0]['content']}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert completion == msgs[1]["content"][len("<think>\n") :]
    # with a system message, and with a response that has no <think> block (plain SFT data)
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}]
    prompt, completion = split_prompt_completion(plain, tok)
    assert prompt.startswith("<|im_start|>system\nBe brief.") and prompt.endswith("assistant\n")
    assert completion == "Hello."
    ex = encode_messages(plain, tok)
    assert ex.labels[: ex.prompt_length] == [-100] * ex.prompt_length
    assert ex.labels[ex.prompt_length :] == ex.input_ids[ex.prompt_length :]
    assert ex.input_ids[-1] == tok.eos_token_id


def test_all_dataset_formats_read_the_same(workspace, tmp_path):
    import datasets

    rows = workspace["rows"]
    expected = [(r["id"], r["messages"]) for r in rows]
    assert list(iter_messages(workspace["data"])) == expected
    assert list(iter_messages(write_jsonl(tmp_path / "d.jsonl.gz", rows))) == expected
    flat = [{k: v for k, v in r.items() if k != "step_surprisal"} for r in rows]
    ds = datasets.Dataset.from_list(flat)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    for path in ("d.parquet", "disk", "dict"):
        assert list(iter_messages(tmp_path / path)) == expected, path


# ---------------------------------------------------------------------------------------------
# Config


def test_config_file_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model_name_or_path: m\ndataset: d.jsonl\noutput_dir: o\nlearning_rate: 2.0e-5\nsave_strategy: epoch\n"
        "lr_scheduler_kwargs:\n  min_lr_rate: 0.1\n",
        encoding="utf-8",
    )
    cfg = sft.load_config(path, ["learning_rate=1e-3", "lr_scheduler_kwargs.min_lr_rate=0.2", "save_strategy=no",
                                 "lora.r=4", "report_to=[none]", "max_steps=7", "max_length=null"])
    assert cfg["learning_rate"] == 1e-3 and isinstance(cfg["learning_rate"], float)  # YAML 1.1 reads a string
    assert cfg["lr_scheduler_kwargs"] == {"min_lr_rate": 0.2}
    assert cfg["save_strategy"] == "no"  # YAML 1.1 reads false
    assert cfg["lora"] == {"r": 4} and cfg["report_to"] == ["none"] and cfg["max_steps"] == 7
    assert cfg["max_length"] is None
    # paper defaults fill what the file leaves out
    assert cfg["num_train_epochs"] == 10 and cfg["max_grad_norm"] == 0.2 and cfg["seed"] == 42
    assert sft.load_config(path, ["max_seq_length=512"])["max_length"] == 512  # the reference's key
    assert "warmup_ratio" not in sft.load_config(path, ["warmup_steps=5"])  # the user's warmup replaces the paper's


@pytest.mark.parametrize(
    "recipe, lr",
    [("r1-distill-qwen-7b.yaml", 4e-5), ("r1-distill-llama-8b.yaml", 2e-5), ("lora-single-gpu.yaml", 1e-4)],
)
def test_shipped_recipes_are_the_papers(recipe, lr, tmp_path):
    overrides = [f"output_dir={tmp_path}"] + ([] if torch.cuda.is_available() else ["use_cpu=true"])
    cfg = sft.load_config(REPO / "configs" / "sft" / recipe, overrides)
    args = sft.build_sft_args(cfg)
    assert args.learning_rate == lr
    assert args.bf16 is True and args.num_train_epochs == 10 and args.seed == 42
    assert args.per_device_train_batch_size == 1 and args.gradient_accumulation_steps == 16
    assert str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == "cosine_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert getattr(args, "warmup_ratio", None) == 0.03 or args.warmup_steps == 0.03
    assert args.max_grad_norm == 0.2 and args.max_length == 16384 and args.gradient_checkpointing is True
    assert args.completion_only_loss is True
    if recipe.startswith("r1-distill-qwen"):
        # a config that names only model, data and output trains with the same recipe
        bare = sft.build_sft_args(sft.load_config(None, ["model_name_or_path=m", "dataset=d", *overrides]))
        for key in ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "max_grad_norm", "max_length",
                    "gradient_checkpointing", "seed", "bf16"):
            assert getattr(bare, key) == getattr(args, key), key


def test_global_batch_size_sets_accumulation(tmp_path):
    overrides = ["model_name_or_path=m", "dataset=d", f"output_dir={tmp_path}", "bf16=false",
                 "per_device_train_batch_size=2"]
    args = sft.build_sft_args(sft.load_config(None, [*overrides, "global_batch_size=16"]))
    assert args.gradient_accumulation_steps == 16 // (2 * args.world_size)
    with pytest.raises(sft.SFTConfigError, match="global_batch_size"):
        sft.build_sft_args(sft.load_config(None, [*overrides, "global_batch_size=5"]))


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in ("ddp", "fsdp", "zero3"):
        config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
        kinds[name] = str(getattr(config.distributed_type, "value", config.distributed_type))
        assert config.mixed_precision == "bf16"
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}
    fsdp = load_config_from_file(str(REPO / "configs" / "accelerate" / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # output_dir loads with from_pretrained
    zero3 = load_config_from_file(str(REPO / "configs" / "accelerate" / "zero3.yaml")).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True


def test_add_sft_registers_the_subcommand():
    import argparse

    from asap_fast.cli import sft as sft_command

    parser = argparse.ArgumentParser(prog="asap")
    sft_command.add(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sft", "--config", "c.yaml", "learning_rate=1e-5", "lora.r=8"])
    assert args.func is sft_command.run
    assert args.config == "c.yaml" and args.overrides == ["learning_rate=1e-5", "lora.r=8"]


@pytest.fixture(scope="module")
def pad_past_vocab(workspace, tmp_path_factory):
    """The workspace model with a tokenizer that gained <pad> (id = the model's vocabulary size)
    and <extra> after it, the embedding never resized (a common state of fine-tuned checkpoints)."""
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("pad") / "model"
    shutil.copytree(workspace["model"], path)
    tok = AutoTokenizer.from_pretrained(path)
    vocab = len(tok)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens(["<extra>"], special_tokens=True)
    tok.save_pretrained(path)
    assert tok.pad_token_id == vocab and tok.convert_tokens_to_ids("<extra>") == vocab + 1
    return path, vocab


def test_pad_token_past_the_vocabulary_pads_with_eos(workspace, pad_past_vocab, tmp_path, capsys):
    # Batches of 4 rows of different lengths need padding: a pad id the embedding lacks used to
    # crash ("Padding_idx must be within num_embeddings"); EOS pads instead, and the user is told.
    model, vocab = pad_past_vocab
    config = tmp_path / "c.yaml"
    config.write_text("", encoding="utf-8")
    out = tmp_path / "o"
    rc = asap_main(["sft", "--config", str(config), *base(workspace, out, f"model_name_or_path={model}",
                                                          f"dataset={workspace['long_data']}", "max_steps=1",
                                                          "per_device_train_batch_size=4",
                                                          "gradient_checkpointing=false")])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    assert (f"asap sft: the tokenizer's pad id {vocab} is outside the model's vocabulary of {vocab}; padding with "
            f"EOS instead") in err
    assert "Traceback" not in err
    assert (out / "trainer_state.json").exists()


def test_token_id_past_the_vocabulary_is_one_line(workspace, pad_past_vocab, tmp_path, capsys):
    model, vocab = pad_past_vocab
    rows = make_rows(2)
    rows[1]["messages"][0]["content"] += " <extra>"
    data = write_jsonl(tmp_path / "extra.jsonl", rows)
    out = tmp_path / "o"
    rc = asap_main(["sft", "--config", str(REPO / "configs" / "sft" / "r1-distill-qwen-7b.yaml"),
                    *base(workspace, out, f"model_name_or_path={model}", f"dataset={data}", "max_steps=1")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("asap sft: error:")]
    assert rc == 2
    assert errors == [f"asap sft: error: training sample 2 has token id {vocab + 1}, but the model's vocabulary has "
                      f"{vocab} entries: tokenizer and model do not match (resize the model's embeddings or use the "
                      f"model's own tokenizer)"]
    assert not (out / "trainer_state.json").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, nothing trained


def _bad_inputs(ws, tmp: Path) -> dict[str, tuple[list[str], str]]:
    no_field = write_jsonl(tmp / "nofield.jsonl", [{"id": 1, "prompt": "p", "generation": "g"}])
    empty = tmp / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    no_assistant = write_jsonl(tmp / "noasst.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    not_a_model = tmp / "notamodel"
    not_a_model.mkdir()
    no_weights = tmp / "noweights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (no_weights / name).write_bytes((ws["model"] / name).read_bytes())
    no_tokenizer = tmp / "notokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((ws["model"] / name).read_bytes())
    return {
        "unknown key": (["lerning_rate=1e-3"], "unknown config key: 'lerning_rate' (did you mean 'learning_rate'?)"),
        "missing field": ([f"dataset={no_field}"], "no 'messages' field"),
        "empty dataset": ([f"dataset={empty}"], "has no rows"),
        "no assistant turn": ([f"dataset={no_assistant}"], "at least 2"),
        "dataset missing": ([f"dataset={tmp / 'nope.jsonl'}"], "dataset not found"),
        "model missing": ([f"model_name_or_path={tmp / 'nope'}"], "model not found"),
        "not a model dir": ([f"model_name_or_path={not_a_model}"], "no config.json"),
        "no tokenizer": ([f"model_name_or_path={no_tokenizer}"], "no tokenizer files"),
        "no weights": ([f"model_name_or_path={no_weights}"], "could not load the model"),
        "all too long": (["max_length=8"], "too long for max_length=8"),
        "bad type": (["num_train_epochs=ten"], "num_train_epochs must be float"),
        "not key=value": (["learning_rate"], "not KEY=VALUE"),
        "unknown lora key": (["lora.rank=4"], "unknown lora key"),
        "forbidden option": (["assistant_only_loss=true"], "assistant_only_loss"),
        "bad chat template": ([f"chat_template={tmp / 'none.jinja'}"], "chat_template must be"),
    }


def test_bad_inputs_fail_before_training_with_one_line(workspace, tmp_path, capsys):
    for case, (extra, message) in _bad_inputs(workspace, tmp_path).items():
        out = tmp_path / "out"
        rc = asap_main(["sft", "--config", str(REPO / "configs" / "sft" / "r1-distill-qwen-7b.yaml"),
                       *base(workspace, out, "max_steps=1"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("asap sft: error:")]
        assert rc == 2, case
        assert len(errors) == 1 and message in errors[0], (case, err[-3:])
        assert not (out / "trainer_state.json").exists() and not (out / "model.safetensors").exists(), case
    assert asap_main(["sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config not found" in capsys.readouterr().err
