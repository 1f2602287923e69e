"""``asap experiment``: the paper's experiment as one command. Compress the traces with each method,
fine-tune the student on each result, evaluate the untrained student and every fine-tuned model on
each benchmark, and write one table (results.md / .csv / .html). Every step is an artifact in the
output directory with its manifest, so a re-run does only what is missing or changed."""

from asap_fast.experiment.config import ConfigError, Experiment, load_experiment
from asap_fast.experiment.plan import Step, build_plan
from asap_fast.experiment.results import collect_results, write_results
from asap_fast.experiment.runner import (
    ExperimentError,
    StepFailed,
    plan_status,
    run_experiment,
)

__all__ = [
    "ConfigError",
    "Experiment",
    "ExperimentError",
    "Step",
    "StepFailed",
    "build_plan",
    "collect_results",
    "load_experiment",
    "plan_status",
    "run_experiment",
    "write_results",
]
