"""Stage 3: supervised fine-tuning on compressed traces (TRL's SFTTrainer, response-only loss).

``data`` turns corpus rows into tokenized samples (needs only a tokenizer); ``train`` builds and runs
the trainer (trl, torch)."""
