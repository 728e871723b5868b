"""What tasks return: small typed records built of ArtifactRefs, counts and usage (never
tables), the summaries of a round, a run and an evaluation, and their JSON as persisted results.

Each is a frozen pydantic model, so Prefect persists it as a result, a type checker follows the
flow body, and the round's summary — the table artifact, the CLI table and
`round=<k>/summary.json` — is built from one `RoundSummary`. The tables themselves, and the
ArtifactRef that stands for one, are in schemas.py.

A persisted task result is JSON (`dump_result` / `load_result`) naming only these records,
ArtifactRef, EvalSummary and plain JSON values: a run's storage can be written by others (a
shared bucket), and a result that could name any type (a pickle) would run their code on the
machine that resumes the run.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lion_core import errors
from lion_core.errors import LionError, ResultRecordError
from lion_core.evaluation.evaluate import EvalSummary
from lion_core.method.decontaminate import Decontamination
from lion_core.method.diversity import Diversity, RougeQuantiles
from lion_core.method.health import AnswerHealth, DomainHealth
from lion_core.run.schemas import ArtifactRef

# A record field added after results were persisted: while None it is left out of the record's
# cache-key form (`Record.key_dump`), so a task whose input is such a record, read back from an
# older run, keeps the key it had before the field existed.
ADDED: dict[str, Any] = {"added": True}


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def key_dump(self) -> dict[str, Any]:
        """`model_dump(mode="json")` without the ADDED fields that are None, at any depth
        (what tasks.caching hashes)."""
        return _key_form(type(self), self.model_dump(mode="json"))


def _key_form(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is not None and (field.json_schema_extra or {}).get("added") and value is None:
            continue
        sub = field.annotation if field is not None else None
        nested = next(
            (
                t
                for t in (sub, *typing.get_args(sub))
                if isinstance(t, type) and issubclass(t, Record)
            ),
            None,
        )
        out[name] = _key_form(nested, value) if nested and isinstance(value, dict) else value
    return out


class Usage(Record):
    """What one role's client did (lion_core.llm.UsageCounter, as a record): `requests` sent to
    the endpoint, `cache_hits` answered from the run's response cache. `run`: the flow run whose
    task did it — a task result cached by Prefect and returned to a later run carries the
    earlier run's id, so the later run can tell that it sent nothing (`seen_from`)."""

    requests: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # USD of the answers received (config `pricing`)
    run: str | None = None

    def __add__(self, other: Usage) -> Usage:
        counts = {k: v + getattr(other, k) for k, v in self if k != "run"}
        return Usage(**counts, run=self.run if self.run == other.run else None)

    def seen_from(self, run: str | None) -> Usage:
        """This usage as run `run` saw it: itself if `run` did the work (or either id is
        unknown), else nothing sent — the task's result came from an earlier run, so every
        request it answered counts as answered from cache."""
        if self.run is None or run is None or self.run == run:
            return self
        answered = self.requests - self.failures + self.cache_hits
        return Usage(cache_hits=answered, run=run)


class Pools(Record):
    """A round's Train and Cache Pools. `decontamination`: round 1's, what the decontamination
    gate did to the seeds (None without evaluation sets, in later rounds, and in results written
    before it existed); `contaminated`: the seeds it dropped (`contaminated_seeds`)."""

    train: ArtifactRef
    cache: ArtifactRef
    decontamination: Decontamination | None = Field(None, json_schema_extra=ADDED)
    contaminated: ArtifactRef | None = Field(None, json_schema_extra=ADDED)


class TeacherAnswers(Record):
    answers: ArtifactRef
    failed: int
    usage: Usage
    health: AnswerHealth | None = None  # None in results written before it existed


class RefereeReviews(Record):
    """One order's reviews (1: teacher shown first, 2: student shown first)."""

    order: int
    reviews: ArtifactRef
    usage: Usage


class SplitStats(Record):
    """What the hard/easy split saw: counts, mean scores, the referee's positional bias."""

    tau: float
    total: int
    hard: int
    easy: int
    unscored: int
    unscored_by_reason: dict[str, int]
    hard_share: float | None
    mean_teacher_score: float | None
    mean_student_score: float | None
    score_ratio: float | None
    mean_gap: float | None
    gap_order_1: float | None
    gap_order_2: float | None
    positional_bias: float | None
    # The split against the truth where it is known (discriminate.split_truth; None without
    # truth, and in results written before they existed).
    truth_known: int | None = Field(None, json_schema_extra=ADDED)
    hard_precision: float | None = Field(None, json_schema_extra=ADDED)
    easy_precision: float | None = Field(None, json_schema_extra=ADDED)


class Split(Record):
    hard: ArtifactRef
    easy: ArtifactRef
    stats: SplitStats


class Candidates(Record):
    """Candidate instructions of one kind (hard or easy seeds), after the post-filters."""

    kind: str
    candidates: ArtifactRef
    usage: Usage


class NewInstructions(Record):
    """Every candidate with its final status; `kept` join the next round's pools. `diversity`:
    how close the candidates were to the pool, the dropped share, the seed categories of the
    kept ones (None in results written before it existed)."""

    generated: ArtifactRef
    statuses: dict[str, int]
    diversity: Diversity | None = None
    # The kept instructions far from every seed's domain (lion_core.method.health).
    domain: DomainHealth | None = None
    # New instructions wanted, how many each kind is still short of, the generation passes
    # (generator.max_attempts) and the top-up passes' requests (None before they existed).
    wanted: int | None = Field(None, json_schema_extra=ADDED)
    shortfall: dict[str, int] | None = Field(None, json_schema_extra=ADDED)
    attempts: int | None = Field(None, json_schema_extra=ADDED)
    usage: Usage | None = Field(None, json_schema_extra=ADDED)
    # Each judged or contaminated candidate's nearest text (lion_core.method.lineage), and what
    # the decontamination gate dropped (None without evaluation sets, and before they existed).
    nearest: ArtifactRef | None = Field(None, json_schema_extra=ADDED)
    decontamination: Decontamination | None = Field(None, json_schema_extra=ADDED)

    @property
    def kept(self) -> int:
        return self.statuses.get("kept", 0)


class RoundSummary(Record):
    """One round, flat: what the table artifact, the CLI table and summary.json show."""

    round: int
    train_pool: int
    cache_pool: int
    teacher_failed: int
    hard: int
    easy: int
    unscored: int
    teacher_score: float | None
    student_score: float | None
    student_to_teacher: float | None
    positional_bias: float | None
    new_instructions: int
    next_train_pool: int
    student: str
    usage: dict[str, Usage]
    seconds: dict[str, float]
    # The student's relative score on the first evaluation set (lion-distill fills them in).
    relative_score: float | None = None
    student_exact_match: float | None = None
    # The novelty stage's diversity statistics (lion_core.method.diversity).
    diversity: Diversity | None = None
    # Refusals, identical and empty teacher answers (lion_core.method.health).
    teacher_health: AnswerHealth | None = None
    # New instructions far from every seed's domain (lion_core.method.health).
    generated_health: DomainHealth | None = None
    # The referee's split against the truth, where known (SplitStats): share of "hard" that
    # the student actually got wrong, of "easy" that it actually got right.
    hard_precision: float | None = None
    easy_precision: float | None = None
    # New instructions the round wanted, and how many generation could not find
    # (generator.max_attempts passes); None in summaries written before they existed.
    new_wanted: int | None = None
    new_shortfall: int | None = None
    # The decontamination gate: the seeds it dropped (round 1) and the new instructions it
    # dropped; None without evaluation sets (and in summaries written before it existed).
    seeds_decontamination: Decontamination | None = None
    decontamination: Decontamination | None = None

    def contamination(self) -> Decontamination | None:
        """Seeds and new instructions together (None when neither was checked)."""
        parts = [d for d in (self.seeds_decontamination, self.decontamination) if d is not None]
        return sum(parts[1:], parts[0]) if parts else None

    def flat(self) -> dict[str, Any]:
        """One level deep: `<role>_<counter>`, `cost_usd` (all roles) and `<stage>_seconds`
        columns (`<role>_sent`: requests sent to the endpoint; `<role>_cached`: answered from the
        run's response cache; `<role>_failures`: requests that failed and were tolerated,
        `<role>.max_failed_share`), a few diversity rows (the whole of it is in
        summary.json), and `contaminated` (seeds and new instructions the decontamination gate
        dropped; None without evaluation sets) with `contaminated_<set>` per set."""
        row = self.model_dump(
            exclude={
                "usage", "seconds", "diversity", "teacher_health", "generated_health",
                "seeds_decontamination", "decontamination",
            }
        )  # fmt: skip
        both = self.contamination()
        row["contaminated"] = both.dropped if both is not None else None
        if both is not None:
            for name, n in both.by_set.items():
                row[f"contaminated_{name}"] = n
        if self.teacher_health is not None:
            h = self.teacher_health
            row["teacher_refusal_share"] = h.share(h.refusals)
            row["teacher_identical_share"] = h.share(h.identical)
            row["teacher_empty_share"] = h.share(h.empty)
        if self.generated_health is not None:
            row["far_from_seeds_share"] = self.generated_health.far_share
        if self.diversity is not None:
            d = self.diversity
            row["novelty_dropped_share"] = d.dropped_share
            row["kept_max_rouge_l"] = _quantiles(d.kept_max_rouge)
            row["dropped_max_rouge_l"] = _quantiles(d.dropped_max_rouge)
            row["top_category"] = d.top_category and f"{d.top_category} ({d.category_basis})"
            row["top_category_share"] = d.top_category_share
        total = self.hard + self.easy
        row["hard_share"] = self.hard / total if total and self.unscored < total else None
        for role, usage in self.usage.items():
            row[f"{role}_sent"] = usage.requests
            row[f"{role}_cached"] = usage.cache_hits
            for field in ("failures", "prompt_tokens", "completion_tokens", "cost_usd"):
                row[f"{role}_{field}"] = getattr(usage, field)
        row["cost_usd"] = sum(usage.cost_usd for usage in self.usage.values())
        for stage, secs in self.seconds.items():
            row[f"{stage}_seconds"] = secs
        return row


def _quantiles(q: RougeQuantiles) -> str | None:
    """'p10 0.21 / p50 0.33 / p90 0.61 / max 0.70 (n=120)', or None without candidates."""
    if not q.count:
        return None
    parts = [f"{k} {getattr(q, k):.2f}" for k in ("p10", "p50", "p90", "max")]
    return " / ".join(parts) + f" (n={q.count})"


class RunSummary(Record):
    """A whole run: where it lives and what each round reported."""

    root: str
    rounds: list[RoundSummary]


class Evaluation(Record):
    """One student judged on one question set: where its results are, and their summary."""

    round: int | None  # None: a model outside the run's rounds (`lion eval --student`)
    set: str
    student: str
    judged: ArtifactRef
    by_category: ArtifactRef
    summary: EvalSummary
    usage: Usage


class Benchmarks(Record):
    """lm-evaluation-harness accuracy of one student."""

    round: int | None
    student: str
    table: ArtifactRef


class StudentEvaluation(Record):
    """Everything measured on one student: each question set, and lm-eval accuracy."""

    round: int | None
    student: str
    sets: list[Evaluation]
    benchmarks: Benchmarks | None = None

    def first(self) -> Evaluation | None:
        """The first configured set's result: what the run table shows."""
        return self.sets[0] if self.sets else None


# ---- persisted results ------------------------------------------------------------------------

TYPE_KEY = "$type"
# Where these models lived before lion_core was split into packages: results persisted then name
# them so, and a run root written then must still resume with every task Cached.
FORMER_MODULES = {
    "lion_core.run.records": "lion_core.records",
    "lion_core.run.schemas": "lion_core.schemas",
    "lion_core.evaluation.evaluate": "lion_core.evaluate",
}


def result_types(*, former: bool = False) -> dict[str, type[BaseModel]]:
    """Every model a persisted result may name, by qualified name: the records of this module,
    ArtifactRef and EvalSummary; with `former`, also by the names older versions wrote."""
    models = [c for c in globals().values() if isinstance(c, type) and issubclass(c, Record)]
    models += [ArtifactRef, EvalSummary]
    names = {f"{c.__module__}.{c.__qualname__}": c for c in models if c is not Record}
    if former:
        names |= {
            f"{FORMER_MODULES[c.__module__]}.{c.__qualname__}": c
            for c in models
            if c is not Record and c.__module__ in FORMER_MODULES
        }
    return names


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a task result's dict keys are strings")
        return {TYPE_KEY: "dict", "value": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, BaseException):  # a failed task's exception, for the record
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        return {TYPE_KEY: "exception", "class": name, "message": str(value)}
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if name not in result_types():
        raise TypeError(
            f"a task result of type {name} cannot be persisted: return a lion_core.run.records "
            "record, an ArtifactRef, an EvalSummary or plain JSON values"
        )
    return {TYPE_KEY: name, "value": value.model_dump(mode="json")}


def _decode(data: Any, where: str, types: dict[str, type[BaseModel]]) -> Any:
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        return [_decode(v, where, types) for v in data]
    if not isinstance(data, dict):
        raise ResultRecordError(f"{where}: refused: unexpected value {data!r}")
    kind = data.get(TYPE_KEY)
    if kind == "dict" and set(data) == {TYPE_KEY, "value"} and isinstance(data["value"], dict):
        return {k: _decode(v, where, types) for k, v in data["value"].items()}
    if kind == "exception" and set(data) == {TYPE_KEY, "class", "message"}:
        return _exception(str(data["class"]), str(data["message"]))
    if kind in types and set(data) == {TYPE_KEY, "value"}:
        try:
            return types[kind].model_validate(data["value"])
        except ValidationError as exc:
            raise ResultRecordError(f"{where}: refused: not a valid {kind}: {exc}") from None
    raise ResultRecordError(
        f"{where}: refused: names type {kind!r}, which is not a lion record"
        if kind is not None
        else f"{where}: refused: an object without a {TYPE_KEY!r} tag"
    )


def _exception(name: str, message: str) -> BaseException:
    """A recorded exception: its own class if it is one of lion_core.errors, else a
    RuntimeError naming the class (no other type is imported on the record's word)."""
    module, _, qualname = name.rpartition(".")
    cls = getattr(errors, qualname, None) if module == errors.__name__ else None
    if isinstance(cls, type) and issubclass(cls, LionError):
        try:
            return cls(message)
        except TypeError:
            pass
    return RuntimeError(f"{name}: {message}")


def dump_result(value: Any) -> bytes:
    """A task or flow result as JSON bytes; TypeError for a type outside `result_types()`."""
    return json.dumps(_encode(value), separators=(",", ":")).encode()


def load_result(blob: bytes, where: str) -> Any:
    """A result `dump_result` wrote, read back; ResultRecordError naming `where` for anything
    else (not JSON, an unknown type, a record that does not validate)."""
    try:
        data = json.loads(blob)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise ResultRecordError(f"{where}: refused: the result is not JSON ({exc})") from None
    return _decode(data, where, result_types(former=True))
