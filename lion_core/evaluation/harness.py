"""Standard benchmarks (BBH, AGIEval, ...) on a student checkpoint, run by lm-evaluation-harness.

lm-eval (the `eval` extra) owns the task definitions, datasets, prompts, few-shot sampling and
metrics; this module only points it at a student folder and flattens its results dict into one
table: a row per (task or group, metric, filter). lm-eval is imported on first use, so the rest
of lion_core works without the extra.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lion_core.errors import EvaluationError
from lion_core.student.checkpoints import resolve_model

# The accuracy-like metrics lm-eval's BBH and AGIEval tasks report (multiple choice: acc,
# acc_norm; generation: exact_match).
ACCURACY_METRICS: tuple[str, ...] = ("acc", "acc_norm", "exact_match")

COLUMNS = [
    "task",  # the task or group name as lm-eval reports it
    "group",  # the group that lists this task (or group); missing (NaN) at the top level
    "is_group",  # True for a group's aggregate row
    "metric",  # e.g. "acc"
    "filter",  # lm-eval's filter pipeline the metric was computed after ("none", ...)
    "value",
    "stderr",  # NaN where lm-eval reports none ("N/A")
    "n",  # documents evaluated (after `limit`)
    "n_total",  # documents in the task's evaluation split
    "n_shot",
    "version",  # the task's YAML version, as text
    "higher_is_better",
]

INSTALL_HINT = "pip install 'lion-distill[eval]'"


def run_lm_eval(
    model_path: str,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
    dtype: str = "auto",
    apply_chat_template: bool = False,
    metrics: Sequence[str] = ACCURACY_METRICS,
    model_args: Mapping[str, Any] | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Evaluate the causal LM at `model_path` on lm-eval `tasks`; one row per task (and group),
    metric and filter, restricted to `metrics` (columns: `COLUMNS`).

    `model_path`: a Hugging Face model folder, a student folder URI (`s3://...`, or one holding
    `source.json`; resolved as training and generation resolve it), or a hub id.
    `tasks`: lm-eval task, group or tag names (e.g. "bbh_zeroshot", "agieval_en"), or YAML
    paths; `include_path`: a folder of extra task YAMLs. `limit`: the first `limit` documents of
    each task only (a smoke run; not comparable numbers). `batch_size`: an int or "auto" (GPU).
    `device`: "cuda", "cuda:1", "cpu", ...; None picks CUDA when available. `num_fewshot`: None
    keeps each task's own default. `seed` seeds python, numpy, torch and the few-shot sampler.
    `dtype` and `model_args` go to lm-eval's "hf" model (`model_args` wins, e.g.
    {"trust_remote_code": True}). Hub datasets are downloaded by `datasets` (or read from its
    cache, HF_DATASETS_CACHE) on first use.
    """
    lm_eval = _import_lm_eval()
    tasks = list(tasks)
    if not tasks:
        raise EvaluationError("run_lm_eval: no tasks given")
    if include_path is not None and not Path(include_path).exists():
        raise EvaluationError(f"run_lm_eval: include_path {include_path!r} does not exist")
    if limit is not None and limit < 1:
        raise EvaluationError(f"run_lm_eval: limit must be >= 1, got {limit}")
    if _looks_like_path(model_path) and not Path(model_path).expanduser().is_dir():
        raise EvaluationError(f"run_lm_eval: model folder {model_path!r} does not exist")
    manager = _task_manager(include_path)
    _check_tasks(tasks, manager, include_path)  # before a (large) model is loaded

    source, revision = resolve_model(model_path, storage_options)
    if _looks_like_path(source) and not Path(source).expanduser().is_dir():
        raise EvaluationError(f"run_lm_eval: model folder {source!r} does not exist")
    args: dict[str, Any] = {"pretrained": source, "dtype": dtype}
    if revision:
        args["revision"] = revision
    args.update(model_args or {})
    if device is None:  # lm-eval's own default is "cuda", also on a machine without one
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=args,
            tasks=tasks,
            task_manager=manager,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=False,
            apply_chat_template=apply_chat_template,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except OSError as exc:  # a model or dataset that cannot be read or downloaded
        raise EvaluationError(f"lm-eval on {source!r}, tasks {tasks}: {exc}") from exc
    if results is None:  # only rank 0 of a multi-process run gets results
        raise EvaluationError(f"lm-eval on {source!r}, tasks {tasks}: no results on this rank")
    return results_table(results, metrics)


def results_table(results: Mapping[str, Any], metrics: Sequence[str] = ACCURACY_METRICS):
    """lm-eval's results dict (from `simple_evaluate`) as a DataFrame of `COLUMNS`, the rows of
    `metrics` only. A task that reports none of `metrics` is an error naming what it reports."""
    per_task: Mapping[str, Mapping[str, Any]] = results.get("results", {})
    subtasks: Mapping[str, list[str]] = results.get("group_subtasks", {})
    groups = set(results.get("groups", {})) | set(subtasks)
    parent = {child: g for g, children in subtasks.items() for child in children}
    n_samples = results.get("n-samples", {})
    n_shot = results.get("n-shot", {})
    versions = results.get("versions", {})
    better = results.get("higher_is_better", {})

    def leaves(name: str) -> list[str]:
        if name not in subtasks:
            return [name]
        return [leaf for child in subtasks[name] for leaf in leaves(child)]

    rows, silent = [], {}
    for name, entry in per_task.items():
        is_group = name in groups
        found = 0
        for key, value in entry.items():
            metric, comma, filter_name = key.partition(",")
            if not comma or metric not in metrics:
                continue
            if is_group:
                counted = [t for t in leaves(name) if key in per_task.get(t, {})]
                n = entry.get("sample_count", {}).get(key, entry.get("sample_len"))
                n_total = sum(n_samples.get(t, {}).get("original", 0) for t in counted)
            else:
                n = n_samples.get(name, {}).get("effective", entry.get("sample_len"))
                n_total = n_samples.get(name, {}).get("original")
            version = versions.get(name)
            rows.append(
                {
                    "task": name,
                    "group": parent.get(name),
                    "is_group": is_group,
                    "metric": metric,
                    "filter": filter_name,
                    "value": float(value),
                    "stderr": _number(entry.get(f"{metric}_stderr,{filter_name}")),
                    "n": n,
                    "n_total": n_total,
                    "n_shot": n_shot.get(name),
                    "version": None if version is None else str(version),
                    "higher_is_better": better.get(name, {}).get(metric),
                }
            )
            found += 1
        if not found and not is_group:
            silent[name] = sorted(k for k in entry if "," in k and "_stderr," not in k)
    if silent:
        raise EvaluationError(
            f"lm-eval tasks report none of the metrics {list(metrics)}: "
            + "; ".join(f"{t} reports {m}" for t, m in silent.items())
            + " (pass metrics=... to keep them)"
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"n": "Int64", "n_total": "Int64", "n_shot": "Int64"})


def _task_manager(include_path: str | None):
    """lm-eval's TaskManager for `include_path`, kept for the process: building one indexes
    every task YAML lm-eval ships (~15,000; tens of seconds on a CPU), the same for every
    student a run evaluates. Built again when the include folder's YAML files change."""
    return _cached_task_manager(include_path, include_signature(include_path))


def include_signature(include_path: str | None) -> tuple:
    """The task YAMLs under `include_path` with their modification times."""
    if include_path is None:
        return ()
    folder = Path(include_path)
    found = folder.rglob("*.yaml") if folder.is_dir() else [folder]
    return tuple(sorted((str(f), f.stat().st_mtime_ns) for f in found))


@functools.lru_cache(maxsize=4)
def _cached_task_manager(include_path: str | None, signature: tuple):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def _import_lm_eval():
    try:
        import lm_eval
    except ImportError as exc:
        raise EvaluationError(
            f"lm-evaluation-harness is needed for standard benchmarks ({exc}): {INSTALL_HINT}"
        ) from exc
    return lm_eval


def _check_tasks(tasks: list[str], manager, include_path: str | None) -> None:
    """Every name must be a task, group or tag lm-eval knows, or a task YAML file."""
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not Path(t).is_file()]
    if not unknown:
        return
    where = f" (with include_path {include_path!r})" if include_path else ""
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3)
        hints.append(f"{name!r}" + (f" (close: {', '.join(close)})" if close else ""))
    raise EvaluationError(f"lm-eval knows no task {'; '.join(hints)}{where}")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" where it has no stderr
        return math.nan
    return number
