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


class MissingAPIKeyError(LLMError, KeyError):
    """The environment variable named by `api_key_env` is not set."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TrainingError(LionError, RuntimeError):
    """Student training failed; the message carries the tail of the training log."""


class GenerationError(LionError, RuntimeError):
    """Student generation failed; the answers committed before the failure are kept."""


class SupervisionError(LionError, RuntimeError):
    """A supervised child process group timed out or was stopped on request."""


class EvaluationError(LionError, RuntimeError):
    """A standard benchmark run (lm-evaluation-harness) could not start or gave no result."""


class ResultRecordError(StorageError):
    """A stored task result is not one lion wrote (another serializer, a type outside our
    records, not JSON): refused, never loaded — loading a pickle would run its code."""


class ModelLoadError(LionError, RuntimeError):
    """A model or tokenizer folder could not be loaded: damaged weights, a malformed
    tokenizer, a config that does not fit the weights. Names the folder (and file)."""
