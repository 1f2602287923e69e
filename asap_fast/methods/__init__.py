"""The baselines of the paper's comparison, as stage-2 alternatives on one engine.

Each method takes the rows stage 2 takes and writes the same fields (``pruned_think``,
``tokens_before``, ``tokens_after``, ``messages``) plus ``method`` and what it kept:

==================  ===========================================  =========================
method              what is removed                              kept as
==================  ===========================================  =========================
asap                steps of lowest first-token surprisal        kept_steps (stage 2)
spirit              steps whose removal raises perplexity least  kept_steps
selective-context   units (tokens, sentences, phrases) of        kept_spans
                    lowest self-information
llmlingua2          words a token classifier drops               kept_words
tokenskip           llmlingua2 at a ratio drawn per row, the     kept_words
                    ratio written into the SFT prompt
==================  ===========================================  =========================

A stage's ``process(records)`` returns, per record, the output dict or a RowError naming the
method; ``load_stage`` builds one with its models loaded. The modules hold each definition.
"""

from __future__ import annotations

import sys

__all__ = ["METHODS", "load_stage"]

METHODS = ("asap", "spirit", "selective-context", "llmlingua2", "tokenskip")


def load_tokenizer(path: str):
    """The fast tokenizer that counts tokens (the scorer's, so that every method counts alike)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the tokenizer {path}: {first}") from None


def load_stage(config, scorer_spec, *, device: str | None = None, quiet: bool = False):
    """The stage of a method config (SpiritConfig, SelectiveContextConfig, LLMLingua2Config or
    TokenSkipConfig) with its models loaded: the scorer of ``scorer_spec`` (a
    :class:`~asap_fast.stage2.fine.ScorerSpec`) for the LM methods, its tokenizer alone for the
    classifier methods (token counts)."""
    from asap_fast.methods.llmlingua2 import LLMLingua2Compressor, LLMLingua2Config, LLMLingua2Stage
    from asap_fast.methods.selective_context import SelectiveContextConfig, SelectiveContextStage
    from asap_fast.methods.spirit import SpiritConfig, SpiritStage
    from asap_fast.methods.tokenskip import TokenSkipConfig, TokenSkipStage

    if isinstance(config, SpiritConfig):
        return SpiritStage(scorer_spec.load(quiet=quiet, stage="compress"), config)
    if isinstance(config, SelectiveContextConfig):
        stage_nlp = None
        if config.unit == "phrase":  # before the scorer loads: a missing pipeline fails fast
            from asap_fast.methods.selective_context import load_spacy

            stage_nlp = load_spacy(config.spacy_model)
        return SelectiveContextStage(scorer_spec.load(quiet=quiet, stage="compress"), config, nlp=stage_nlp)
    if isinstance(config, (LLMLingua2Config, TokenSkipConfig)):
        lingua = config if isinstance(config, LLMLingua2Config) else config.llmlingua
        from asap_fast.methods.llmlingua2 import resolve_classifier

        resolve_classifier(lingua.model)  # a missing classifier fails before any model loads
        path = scorer_spec.model_path()
        if scorer_spec.model is None and not quiet:
            print(f"asap compress: no --model given, counting tokens with the bundled demo scorer's tokenizer {path}",
                  file=sys.stderr)
        tokenizer = load_tokenizer(path)
        compressor = LLMLingua2Compressor(lingua.model, device=device)
        if isinstance(config, LLMLingua2Config):
            return LLMLingua2Stage(compressor, tokenizer, config)
        return TokenSkipStage(compressor, tokenizer, config)
    raise TypeError(f"not a method config: {type(config).__name__}")
