"""Error types users can catch. Every message names the field, file, row or request at fault."""

from __future__ import annotations


class LionError(Exception):
    """Base class of every error lion-distill raises on purpose."""


class ConfigError(LionError, ValueError):
    """A configuration is malformed: unknown key, bad value, unreadable file."""


class DataError(LionError, ValueError):
    """Input data is malformed. Carries the file, row and column when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file, self.row, self.column = file, row, column
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file is not None else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class DataHealthError(LionError, ValueError):
    """The teacher's answers are degenerate (refusals, one repeated answer, empty answers): the
    round stops before the student learns them. The message names the cause and the counts."""


class StorageError(LionError, OSError):
    """Reading or writing the run's storage failed."""


class SnapshotExistsError(StorageError, FileExistsError):
    """A committed snapshot is never overwritten; this write tried to."""


class SchemaError(DataError):
    """A table does not match the fixed schema of its artifact."""


class LLMError(LionError):
    """An LLM endpoint could not be used (unreachable, missing key, bad answer)."""


class EndpointUnreachableError(LLMError, ConnectionError):
    """The endpoint did not answer at all."""


class EndpointGoneError(EndpointUnreachableError):
    """The process serving the endpoint is known to have exited (a served student that
    died): nothing is sent or retried against it any more."""


class EndpointRejectedError(LLMError):
    """The endpoint refused the role's requests as such (401/403: the key; 404: the model or
    the URL): no request of the batch can succeed, so the batch stops at once."""

    def __init__(self, message: str, *, role: str, base_url: str, model: str, status: int) -> None:
        super().__init__(message)
        self.role, self.base_url, self.model, self.status = role, base_url, model, status


class BatchError(LLMError):
    """A provider batch failed as a whole (validation), or was cancelled by someone else."""


class BudgetExceeded(LLMError):
    """A stage would take the run past `budget_usd`: stopped before sending anything."""

    def __init__(self, message: str, *, stage: str, spent: float, needed: float, budget: float):
        self.stage, self.spent, self.needed, self.budget = stage, spent, needed, budget
        super().__init__(message)


class MissingAPIKeyError(LLMError, KeyError):
    """The environment variable named by `api_key_env` is not set."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PreflightError(LionError):
    """The checks before a run found problems (keys, endpoints, storage, initial data); the
    message lists each, naming the field to fix."""


class TrainingError(LionError, RuntimeError):
    """Student training failed; the message carries the tail of the training log."""


class GenerationError(LionError, RuntimeError):
    """Student generation failed; the answers committed before the failure are kept."""


class SupervisionError(LionError, RuntimeError):
    """A supervised child process group timed out or was stopped on request."""


class EvaluationError(LionError, RuntimeError):
    """A standard benchmark run (lm-evaluation-harness) could not start or gave no result."""


class RequestsFailedError(LLMError):
    """More of a role's requests failed (after their retries) than `<role>.max_failed_share`
    tolerates. Nothing is committed; the successes are in the response cache, so the next run
    asks only the failed requests again."""

    def __init__(self, message: str, *, role: str, failed: int, asked: int, first: str) -> None:
        super().__init__(message)
        self.role, self.failed, self.asked, self.first = role, failed, asked, first


class LeaseHeldError(LionError, RuntimeError):
    """Another run holds the run root's lease: two runs on one root would pay every request
    twice and overwrite each other's checkpoints. The message names the holder."""


class LeaseLostError(LionError, RuntimeError):
    """This run's lease on its root was taken over (its heartbeat had gone stale), so another
    run may have written to the root meanwhile."""


class ResultRecordError(StorageError):
    """A stored task result is not one lion wrote (another serializer, a type outside our
    records, not JSON): refused, never loaded — loading a pickle would run its code."""


class ModelLoadError(LionError, RuntimeError):
    """A model or tokenizer folder could not be loaded: damaged weights, a malformed
    tokenizer, a config that does not fit the weights. Names the folder (and file)."""


class GpuStageError(LionError, RuntimeError):
    """A GPU stage run as a flow run of `placement.gpu_deployment` did not complete (failed,
    crashed or was cancelled), or its deployment cannot be used. The message names the flow
    run; its own logs say why."""
