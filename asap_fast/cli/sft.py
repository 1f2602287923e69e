"""``asap sft`` (also what ``accelerate launch -m asap_fast.cli sft`` runs on every process)."""

from __future__ import annotations

from asap_fast.cli.common import subparser

DESCRIPTION = (
    "Fine-tune a model on compressed traces (stage 3) with trl's SFTTrainer. CONFIG is a YAML file with "
    "model_name_or_path, dataset (the `asap fine` output: .jsonl, .jsonl.gz, .parquet or a save_to_disk "
    "directory; its 'messages' field is used), output_dir, and any trl SFTConfig / transformers "
    "TrainingArguments field. Defaults are the paper's recipe (bf16, 10 epochs, lr 4e-5, batch 1 x "
    "accumulation 16, cosine_with_min_lr with min_lr_rate 0.1, warmup 0.03, max_grad_norm 0.2, max_length "
    "16384, gradient checkpointing, seed 42). A sample is kept when its tokens, with the BOS counted once more, are fewer than max_length "
    "(the reference's filter), else dropped and counted, never truncated; the loss covers the assistant response only. Multi-GPU / multi-node: accelerate launch "
    "--config_file configs/accelerate/{ddp,fsdp,zero3}.yaml -m asap_fast.cli sft --config CONFIG [KEY=VALUE ...]."
)


def add(subparsers) -> None:
    p = subparser(subparsers, "sft", help="fine-tune on compressed traces (trl SFTTrainer, response-only loss)",
                  description=DESCRIPTION,
                  example="asap sft --config configs/sft/lora-single-gpu.yaml dataset=out/fine.jsonl output_dir=runs/lora")
    p.add_argument("--config", required=True, metavar="CONFIG", help="YAML recipe (see configs/sft/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, values parsed as YAML (learning_rate=2e-5, max_steps=100, lora.r=8, bf16=false)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.sft.train import load_config, run_sft

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg, sort_keys=True), end="")
        return 0
    run_sft(cfg, quiet=args.quiet)
    return 0
