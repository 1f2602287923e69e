"""``Compressor``: ASAP stage 2 or a baseline as one callable over column batches, for other
pipelines (``datasets.Dataset.map(compressor, batched=True)``, Ray Data
``ds.map_batches(Compressor, fn_constructor_kwargs=..., concurrency=N)``).

It runs the stages the CLI runs, on the same per-row code: method "asap" is
:class:`~asap_fast.stage2.fine.FineStage` (what `asap fine` writes), the baselines are the stages of
:func:`~asap_fast.methods.load_stage` (what `asap compress --method M` writes). A batch is a dict of
columns (lists, numpy arrays as Ray Data's default "numpy" format gives them, a pyarrow Table or a
pandas DataFrame); the call returns a dict of lists: every input column, the method's output
columns, and ``reject``, the reason a row was not compressed (None for compressed rows; a rejected
row's output columns are None). Nothing raises for a bad row. ``kept_words`` (llmlingua2,
tokenskip: [word, 0/1] pairs, which no Arrow type holds) is JSON text, as in the CLI's Parquet and
datasets outputs; every other value is the one the CLI's JSON Lines output holds.

Columnar batches cannot tell a field that is absent from one that is null (``datasets`` and Arrow
fill absent fields with null), so a null field is given to the stage as absent: a row whose
``prompt`` or ``generation`` is null is rejected as "missing field", as the CLI rejects a row without
it, and a null ``kind`` means the default kind (code), as a row without ``kind`` does in the CLI.

The scorer loads on the first call (or :meth:`Compressor.load`), once per object; pickling a
Compressor carries its configuration only, so it travels to Ray actors and ``datasets`` worker
processes, and ``datasets`` can fingerprint it for its cache.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from asap_fast.core.errors import RowError
from asap_fast.methods import METHODS
from asap_fast.pipeline.records import unwritable_text
from asap_fast.stage2.fine import PruneConfig, ScorerSpec

__all__ = ["JSON_TEXT_FIELDS", "OUTPUT_FIELDS", "REJECT_FIELD", "Compressor", "method_config", "output_fields",
           "output_schema"]

REJECT_FIELD = "reject"
REQUIRED = ("prompt", "generation")  # what the CLI's run engine requires of every row

# The columns each method adds to a row, in the order the CLI writes them (a batch in which every
# row is rejected still has them, null, so that every batch of a dataset has one schema).
OUTPUT_FIELDS = {
    "asap": ("pruned_think", "step_surprisal", "kept_steps", "tokens_before", "tokens_after", "messages"),
    "spirit": ("method", "pruned_think", "step_importance", "kept_steps", "tokens_before", "tokens_after",
               "achieved_ratio", "messages"),
    "selective-context": ("method", "pruned_think", "kept_spans", "units_kept", "units_total", "tokens_before",
                          "tokens_after", "achieved_ratio", "messages"),
    "llmlingua2": ("method", "pruned_think", "kept_words", "tokens_before", "tokens_after", "achieved_ratio",
                   "messages"),
    "tokenskip": ("method", "pruned_think", "tokenskip_ratio", "kept_words", "tokens_before", "tokens_after",
                  "achieved_ratio", "messages"),
}
assert set(OUTPUT_FIELDS) == set(METHODS)

# Fields whose values Arrow cannot hold as one type ([word, 1] pairs), given as JSON text
# (json.dumps of the CLI's value), as the CLI's Parquet and datasets outputs store them
JSON_TEXT_FIELDS = frozenset({"kept_words"})


def output_fields(method: str, matched: bool = False) -> tuple[str, ...]:
    """``method``'s output columns in the CLI's order; with ``match_ratio`` a row also records the knob
    it was matched with (``match_knob``), and stage 2 its ``achieved_ratio``."""
    fields = OUTPUT_FIELDS[method]
    if not matched:
        return fields
    if method == "asap":
        return (*fields, "match_knob", "achieved_ratio")
    at = fields.index("tokens_before")
    return (*fields[:at], "match_knob", *fields[at:])


def output_schema(method: str, matched: bool = False):
    """The Arrow types of ``method``'s output columns and ``reject`` (pyarrow.Schema)."""
    import pyarrow as pa

    ints, floats = pa.list_(pa.int64()), pa.list_(pa.float64())
    types = {
        "method": pa.string(), "pruned_think": pa.string(), "step_surprisal": floats, "step_importance": floats,
        "kept_steps": ints, "kept_spans": pa.list_(ints), "units_kept": pa.int64(), "units_total": pa.int64(),
        "kept_words": pa.string(), "tokenskip_ratio": pa.float64(), "tokens_before": pa.int64(),
        "tokens_after": pa.int64(), "achieved_ratio": pa.float64(),
        "messages": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        # a step budget for the step methods, a kept fraction or rate for the others
        "match_knob": pa.int64() if method in ("asap", "spirit") else pa.float64(),
    }
    return pa.schema([(name, types[name]) for name in output_fields(method, matched)] + [(REJECT_FIELD, pa.string())])

# the options of each baseline besides budget / ratio / think_field / task (`asap compress --method`)
METHOD_OPTIONS = {
    "asap": ("mode", "steps_per_round"),
    "spirit": (),
    "selective-context": ("unit", "spacy_model", "sc_aggregate", "sc_context", "sc_split"),
    "llmlingua2": ("lingua_model", "force_tokens", "force_reserve_digit", "drop_consecutive", "token_to_word"),
    "tokenskip": ("lingua_model", "force_tokens", "force_reserve_digit", "drop_consecutive", "token_to_word",
                  "tokenskip_ratios", "tokenskip_seed", "tokenskip_separator"),
}


def method_config(method: str, *, budget: int | None = None, ratio: float | None = None,
                  match_ratio: float | None = None, think_field: str = "auto", task: str = "auto", **options):
    """The typed config of ``method`` with the CLI's defaults: a PruneConfig for "asap" (budget 4096
    unless a ratio is given), else the baseline's config (ratio 0.5 unless a budget or ratio is
    given; tokenskip draws its ratio per row and takes neither). ``options``: the method's own
    (METHOD_OPTIONS, the `asap compress` options without dashes); None means the default."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(METHOD_OPTIONS[method]))
    if foreign:
        raise ValueError(f"{foreign[0]} is not an option of method {method!r} "
                         f"(its options: {', '.join(METHOD_OPTIONS[method]) or 'none'})")
    if sum(x is not None for x in (budget, ratio, match_ratio)) > 1:
        raise ValueError(f"give one of budget, ratio and match_ratio, not both (got budget={budget!r}, "
                         f"ratio={ratio!r}, match_ratio={match_ratio!r})")
    if method == "asap":
        if match_ratio is not None:  # the budget searched per row (asap_fast.stage2.matching)
            return PruneConfig(budget=None, ratio=match_ratio, match=True, mode=given.get("mode", "global"),
                               steps_per_round=given.get("steps_per_round", 1), think_field=think_field, task=task)
        return PruneConfig(budget=4096 if budget is None and ratio is None else budget, ratio=ratio,
                           mode=given.get("mode", "global"), steps_per_round=given.get("steps_per_round", 1),
                           think_field=think_field, task=task)
    from asap_fast.methods.common import Target

    common = {"think_field": think_field, "task": task}
    if method == "tokenskip":
        if budget is not None or ratio is not None:
            raise ValueError("tokenskip draws its ratio per row from tokenskip_ratios; budget and ratio do not apply")
        target = None
        if match_ratio is not None and "tokenskip_ratios" in given:
            raise ValueError("tokenskip with match_ratio R trains every row at R; give it or tokenskip_ratios, not both")
    elif match_ratio is not None:
        target = Target(ratio=match_ratio, match=True)
    else:
        target = Target(budget=budget, ratio=None) if budget is not None else Target(ratio=ratio or 0.5)
    if method == "spirit":
        from asap_fast.methods.spirit import SpiritConfig

        return SpiritConfig(target=target, **common)
    if method == "selective-context":
        from asap_fast.methods.selective_context import SelectiveContextConfig

        return SelectiveContextConfig(target=target, unit=given.get("unit", "token"),
                                      spacy_model=given.get("spacy_model", "en_core_web_sm"),
                                      aggregate=given.get("sc_aggregate"), context=given.get("sc_context", "sentence"),
                                      split=given.get("sc_split", "original"), **common)
    from asap_fast.methods.llmlingua2 import DEFAULT_MODEL, LLMLingua2Config

    lingua_target = target if target is not None else Target(ratio=0.5)  # tokenskip replaces it per row
    matched = match_ratio is not None
    lingua = LLMLingua2Config(model=given.get("lingua_model", DEFAULT_MODEL), target=lingua_target,
                              force_tokens=tuple(given.get("force_tokens", ())),
                              force_reserve_digit=bool(given.get("force_reserve_digit", False)),
                              drop_consecutive=bool(given.get("drop_consecutive", False)),
                              token_to_word=given.get("token_to_word", "mean"), **common)
    if method == "llmlingua2":
        return lingua
    from asap_fast.methods.tokenskip import RATIOS, SEPARATOR, TokenSkipConfig

    ratios = (match_ratio,) if matched else tuple(given.get("tokenskip_ratios", RATIOS))
    return TokenSkipConfig(llmlingua=lingua, ratios=ratios, match=matched,
                           seed=given.get("tokenskip_seed", 42), separator=given.get("tokenskip_separator", SEPARATOR))


def _plain(value, *, nan_is_null: bool = False):
    """A column value as the JSON-like Python value the CLI's rows hold: numpy arrays and scalars
    (Ray Data's numpy batches, nested ones included) become lists and Python scalars."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_plain(v, nan_is_null=nan_is_null) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and nan_is_null and math.isnan(value):
        return None  # Ray Data's numpy format holds a null of a numeric column as NaN
    if isinstance(value, dict):
        return {k: _plain(v, nan_is_null=nan_is_null) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, nan_is_null=nan_is_null) for v in value]
    return value


def _columns(batch) -> dict[str, list]:
    """``batch`` as a dict of equal-length Python lists."""
    if hasattr(batch, "to_pydict") and hasattr(batch, "schema"):  # pyarrow.Table / RecordBatch
        return batch.to_pydict()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns") and hasattr(batch, "iloc"):  # pandas.DataFrame
        import pandas as pd

        # pandas holds a null as None, NaN or pd.NA depending on the column's dtype
        return {str(name): [None if v is pd.NA else _plain(v, nan_is_null=True) for v in batch[name].to_numpy(dtype=object)]
                for name in batch.columns}
    if not isinstance(batch, Mapping) and not hasattr(batch, "keys"):
        raise TypeError(f"a batch is a dict of columns (or a pyarrow Table / pandas DataFrame), "
                        f"not {type(batch).__name__}")
    import numpy as np

    columns = {}
    for name in batch.keys():
        values = batch[name]
        if isinstance(values, np.ndarray):
            columns[name] = [_plain(v, nan_is_null=values.dtype.kind == "f") for v in values]
        else:
            columns[name] = [_plain(v) for v in values]
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"the batch's columns have different lengths: {sorted(lengths)}")
    return columns


class Compressor:
    """Compress the thinking of each row of a column batch with ASAP stage 2 or a baseline.

    method:        "asap" (stage 2 on the row's thinking: `asap fine`) or a baseline of `asap compress
                   --method` ("spirit", "selective-context", "llmlingua2", "tokenskip")
    model:         the scorer (a causal LM directory or hub id; None = the bundled demo scorer). The
                   classifier baselines use only its tokenizer, to count tokens.
    budget, ratio: the target, as in the CLI (asap: budget 4096 by default; baselines: ratio 0.5)
    match_ratio:   ``--match-ratio``: the method's knob searched per row to keep this fraction of the
                   tokens (docs/methods.md); each row also gets ``match_knob``, the knob it was
                   matched with (and ``achieved_ratio`` for asap)
    think_field, task, mode, steps_per_round: as `asap fine`'s options
    device, dtype, max_length, batch_tokens: where and how the scorer runs (ScorerSpec)
    threads:       torch's CPU thread count, set when the scorer loads (CPU scores can differ in the
                   last bits between thread counts; the CLI uses torch's default)
    **options:     the baseline's own options (unit, spacy_model, lingua_model, force_tokens, ...)

    ``compressor(batch)`` returns the batch as a dict of lists with the method's OUTPUT_FIELDS and
    ``reject`` added (a pyarrow Table when ``Dataset.map`` calls it, typed so that any first batch
    works); each row's values are those the CLI writes for it.
    """

    def __init__(self, method: str = "asap", model: str | None = None, *, budget: int | None = None,
                 ratio: float | None = None, match_ratio: float | None = None, think_field: str = "auto",
                 task: str = "auto",
                 mode: str | None = None, steps_per_round: int | None = None, device: str | None = None,
                 dtype: str | None = None, max_length: int | None = None, batch_tokens: int = 32768,
                 threads: int | None = None, quiet: bool = True, **options):
        if mode is not None or steps_per_round is not None:
            options.update(mode=mode, steps_per_round=steps_per_round)
        self.method = method
        self.config = method_config(method, budget=budget, ratio=ratio, match_ratio=match_ratio,
                                    think_field=think_field, task=task, **options)
        self.spec = ScorerSpec(model=model, device=device, dtype=dtype, max_length=max_length,
                               batch_tokens=batch_tokens)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads, self.quiet = threads, quiet
        self.matched = match_ratio is not None
        self.output_fields = output_fields(method, self.matched)
        self._stage = None

    def __repr__(self) -> str:
        return f"Compressor(method={self.method!r}, model={self.spec.model!r}, config={self.config!r})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_stage": None}  # the configuration travels; the scorer loads where it runs

    def features(self, input_features=None):
        """The ``datasets.Features`` of the output: ``input_features`` (a Dataset's ``.features``) plus
        the output columns, for ``Dataset.map(..., features=...)`` where a pipeline wants the types
        fixed in advance (without it, the types come from the first batch)."""
        try:
            import datasets
        except ImportError:
            raise ImportError("Compressor.features needs datasets: pip install datasets") from None
        output = datasets.Features.from_arrow_schema(output_schema(self.method, self.matched))
        return datasets.Features({**(input_features or {}), **output})

    def load(self) -> Compressor:
        """Load the scorer (and the method's other models) now rather than on the first call."""
        if self._stage is None:
            if self.threads is not None:
                import torch

                torch.set_num_threads(self.threads)
            if self.method == "asap":
                from asap_fast.stage2.fine import FineStage

                self._stage = FineStage(self.spec.load(quiet=self.quiet), self.config)
            else:
                from asap_fast.methods import load_stage

                self._stage = load_stage(self.config, self.spec, device=self.spec.device, quiet=self.quiet)
        return self

    def process(self, records: list[dict]) -> list[dict | RowError]:
        """The CLI's per-row results for ``records`` (dicts with ``prompt`` and ``generation``): the
        output record, or a RowError naming why the row is rejected."""
        self.load()
        results: list = [None] * len(records)
        ready = []
        for i, record in enumerate(records):
            missing = [name for name in REQUIRED if name not in record]
            # a row the CLI could not read or write (a lone surrogate) is refused before the stage,
            # whose tokenizer would raise on it
            unreadable = unwritable_text(record)
            if unreadable is not None:
                results[i] = RowError(unreadable)
            elif missing:
                results[i] = RowError(f"missing field '{missing[0]}'")
            else:
                ready.append(i)
        outs = list(self._stage.process([records[i] for i in ready])) if ready else []
        if len(outs) != len(ready):
            raise RuntimeError(f"the {self.method} stage returned {len(outs)} results for {len(ready)} rows")
        for i, out in zip(ready, outs):
            if not isinstance(out, RowError):
                reason = unwritable_text(out)  # what the CLI's writer rejects
                if reason is not None:
                    out = RowError(reason)
            results[i] = out
        return results

    def __call__(self, batch):
        columns = _columns(batch)
        n = len(next(iter(columns.values()))) if columns else 0
        records = [{name: values[i] for name, values in columns.items() if values[i] is not None} for i in range(n)]
        results = self.process(records)
        out = {name: list(values) for name, values in columns.items()}
        for name in (*self.output_fields, REJECT_FIELD):
            out.setdefault(name, [None] * n)
        for i, result in enumerate(results):
            if isinstance(result, RowError):
                out[REJECT_FIELD][i] = " ".join(str(result).split()) or type(result).__name__
                continue
            out[REJECT_FIELD][i] = None  # this Compressor's verdict, whatever an input column said
            for name, value in result.items():
                if name not in out:  # a field this method's OUTPUT_FIELDS does not name
                    out[name] = [None] * n
                if name in JSON_TEXT_FIELDS and value is not None:
                    value = json.dumps(value, ensure_ascii=False)
                out[name][i] = value
        table = getattr(batch, "pa_table", None)  # a datasets.Dataset.map batch (LazyBatch)
        if table is not None and getattr(table, "num_rows", None) == n:
            return self._arrow_batch(table, out)
        return out

    def _arrow_batch(self, table, out: dict[str, list]):
        """``out`` as a pyarrow Table for ``Dataset.map``: the input columns with their own types, the
        output columns typed by their values, or by :func:`output_schema` where every value is null
        (datasets takes a column's type from the first batch written and refuses a null-typed one, so a
        first batch without rejects or without compressed rows would otherwise stop the map)."""
        import pyarrow as pa

        declared = output_schema(self.method, self.matched)
        arrays, names = [], []
        for name, values in out.items():
            if name in table.column_names and name not in declared.names:
                arrays.append(table.column(name))
            elif all(v is None for v in values) and name in declared.names:
                arrays.append(pa.array(values, type=declared.field(name).type))
            else:
                arrays.append(pa.array(values))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)
