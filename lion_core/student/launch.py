"""`train_student`: fine-tune the student in a subprocess and return the trained model's URI.

The training program (train.py) runs under the `deepspeed` launcher (several GPUs, several nodes
through a hostfile, or CPU ranks) or as one plain `python` process, supervised as a process group
(`lion_core.ops.supervise`: output streamed to the caller's logger, the group killed on
cancellation, timeout or the caller's death).

Training happens in a local folder; checkpoints and the final model are committed to the run's
storage (a local folder or s3://) with completion markers. A second call after a crash resumes
from the latest committed checkpoint; a call after success returns at once. Each attempt's log
goes to `round=<k>/logs` when it ends, or, if its caller was killed, at the next call.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pandas as pd

from lion_core.config import LionConfig
from lion_core.errors import DataError, LeaseLostError, TrainingError
from lion_core.ops.supervise import (
    cpu_thread_env,
    free_port,
    is_deepspeed_chatter,
    run_process_group,
)
from lion_core.run import layout
from lion_core.run.lease import held_guard
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore
from lion_core.student.checkpoints import (
    COMPLETE,
    download_dir,
    is_complete,
    resolve_model,
    scan_checkpoints,
    scratch_for,
)

log = logging.getLogger(__name__)

LOG_PREFIX = "train-"  # train-<timestamp>.log, one per attempt, in scratch and round=<k>/logs


def train_student(
    cfg: LionConfig,
    store: RunStore,
    round: int,
    train_data_uri: str,
    init_uri: str,
    *,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """Fine-tune the model at `init_uri` on `train_data_uri`; return `round=<k>/student`'s URI.

    `train_data_uri`: a Parquet file (local path or URI readable with the run's storage
    options) with one row per example and the text columns `instruction`, `input` (may be
    empty or null) and `answer` (the teacher's answer, the training target). Other columns
    (e.g. instruction_id) are ignored.

    `init_uri`: the model to start from: round 0's student for `training.init_from: base`,
    round k-1's student for `previous` (the caller picks; see docs/student.md).

    `logger` receives the training log (default: this module's logger). `should_stop` is
    polled every half second; when it returns True the training group is killed (as on
    cancellation) and TrainingError is raised; the committed checkpoints stay.
    Raises TrainingError (with the log's tail) when training fails or times out.
    """
    logger = logger or log
    storage = store.storage
    final_rel = layout.student(round)
    work = scratch_for(storage.uri(layout.round_dir(round)), "train")
    upload_earlier_logs(storage, round, work)
    if is_complete(storage, final_rel):
        logger.info("round %d student already trained: %s", round, storage.uri(final_rel))
        prune_checkpoints(storage, round, keep_last=cfg.training.keep_checkpoints)
        return storage.uri(final_rel)

    options = cfg.storage.options
    frame = _read_train_data(train_data_uri, options)
    train_file = work / "train.parquet"
    frame.to_parquet(train_file, index=False)

    # -- where the Trainer writes: straight into local storage, else scratch then upload ----
    ckpt_rel = layout.checkpoints(round)
    steps, incomplete = scan_checkpoints(storage, round)
    for name in incomplete:  # a save that was killed half-way
        storage.delete(f"{ckpt_rel}/{name}", recursive=True)
    if storage.exists(final_rel):  # a final save that was killed half-way
        storage.delete(final_rel, recursive=True)
    tb_rel = layout.tensorboard(round)
    if storage.is_local:
        output_dir = Path(storage.path(ckpt_rel))
        final_dir = Path(storage.path(final_rel))
        tb_dir = Path(storage.path(tb_rel))
    else:
        output_dir, final_dir, tb_dir = work / "checkpoints", work / "final", work / "tensorboard"
    output_dir.mkdir(parents=True, exist_ok=True)

    resume = None
    if steps:
        name = f"checkpoint-{steps[-1]}"
        resume = output_dir / name
        if not storage.is_local:
            for other in output_dir.glob("checkpoint-*"):
                if other.name != name or not (other / COMPLETE).exists():
                    shutil.rmtree(other, ignore_errors=True)
            if not (resume / COMPLETE).exists():
                download_dir(storage, f"{ckpt_rel}/{name}", resume)
        logger.info("round %d: resuming from committed %s", round, name)

    init, revision = resolve_model(init_uri, options)
    spec = {
        "config": cfg.model_dump(mode="json"),
        "round": round,
        "train_data": str(train_file),
        "init": init,
        "revision": revision,
        "output_dir": str(output_dir),
        "final_dir": str(final_dir),
        "tensorboard_dir": str(tb_dir),
        "resume": str(resume) if resume else None,
        "storage_root": storage.uri(),
        "storage_options": options,
        "checkpoints_rel": ckpt_rel,
        "student_rel": final_rel,
        "launcher": cfg.training.launcher,
    }
    spec_file = work / "job.json"
    spec_file.write_text(json.dumps(spec, indent=2))

    # The root's lease, checked before the attempt and every half second of it: a run that
    # lost its root to another stops training at once (two runs trained into one folder).
    guard = held_guard()
    lost: list[LeaseLostError] = []

    def stop() -> bool:
        if guard is not None:
            try:
                guard()
            except LeaseLostError as exc:
                lost.append(exc)
                return True
        return bool(should_stop and should_stop())

    if guard is not None:
        guard()
    cmd, env = training_command(cfg, spec_file)
    logger.info("round %d: training %s -> %s", round, init_uri, storage.uri(final_rel))
    logger.info("command: %s", " ".join(cmd))
    log_file = work / f"{LOG_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}.log"
    try:
        rc, tail = run_process_group(
            cmd,
            env=env,
            log_file=log_file,
            logger=logger,
            timeout=cfg.training.timeout,
            should_stop=stop,
            error=TrainingError,
            quiet=is_deepspeed_chatter,  # in the log file (and an error's tail) only
        )
    except TrainingError:
        if lost:
            raise lost[0] from None
        raise
    finally:
        _upload_log(storage, round, log_file)
        if not storage.is_local and tb_dir.is_dir():  # each attempt's event files
            storage.put_dir(tb_dir, tb_rel)
    if rc != 0:
        raise TrainingError(
            f"round {round} training failed (exit code {rc}); last lines of the log:\n"
            + "\n".join(tail)
        )
    if not is_complete(storage, final_rel):
        raise TrainingError(
            f"round {round} training exited cleanly but {storage.uri(final_rel)} has no "
            f"{COMPLETE} marker; last lines of the log:\n" + "\n".join(tail)
        )
    prune_checkpoints(storage, round, keep_last=cfg.training.keep_checkpoints)
    if not storage.is_local:
        shutil.rmtree(work, ignore_errors=True)
    return storage.uri(final_rel)


def prune_checkpoints(storage: Storage, round: int, *, keep_last: bool) -> None:
    """Once round `round`'s student is committed its checkpoints only serve to resume a training
    that is over: delete them all, or all but the last committed one (`keep_last`). Called
    after the commit, so a crash before it leaves the checkpoints a retry resumes from, and
    again by a call that finds the student committed (a crash between commit and pruning)."""
    ckpt_rel = layout.checkpoints(round)
    if not storage.exists(ckpt_rel):
        return
    if not keep_last:
        storage.delete(ckpt_rel, recursive=True)
        return
    steps, incomplete = scan_checkpoints(storage, round)
    for name in [*incomplete, *(f"checkpoint-{s}" for s in steps[:-1])]:
        storage.delete(f"{ckpt_rel}/{name}", recursive=True)


def init_uri_for(cfg: LionConfig, store: RunStore, round: int) -> str:
    """The model round `round` starts from: the base student (round 0) for
    `training.init_from: base`, the previous round's student for `previous`."""
    k = round - 1 if cfg.training.init_from == "previous" else 0
    return store.storage.uri(layout.student(max(k, 0)))


def _read_train_data(uri: str, options: dict) -> pd.DataFrame:
    try:
        with fsspec.open(uri, "rb", **(options if "://" in uri else {})) as fh:
            frame = pd.read_parquet(io.BytesIO(fh.read()))
    except FileNotFoundError:
        raise DataError("training data not found", file=uri) from None
    except Exception as exc:
        raise DataError(f"cannot read training data: {exc}", file=uri) from exc
    if frame.empty:
        raise DataError("training data has no rows", file=uri)
    from lion_core.student.data import check_train_frame  # torch: not in the flow's import

    return check_train_frame(frame, source=uri)


def upload_earlier_logs(storage, round: int, work: Path) -> list[str]:
    """Upload the training logs in the round's scratch folder `work` that are not yet in
    `round=<k>/logs`; return their names. An attempt whose caller was killed (SIGKILL, a lost
    node) never reached the upload in its `finally`; the next attempt sends its log."""
    try:
        stored = set(storage.listdir(layout.logs(round)))
    except Exception as exc:  # the logs are a convenience; never block training on them
        log.warning("cannot list %s: %s", storage.uri(layout.logs(round)), exc)
        return []
    pending = [f for f in sorted(work.glob(f"{LOG_PREFIX}*.log")) if f.name not in stored]
    for log_file in pending:
        _upload_log(storage, round, log_file)
    return [f.name for f in pending]


def _upload_log(storage, round: int, log_file: Path) -> None:
    if not log_file.exists():
        return
    try:
        storage.write_bytes(
            f"{layout.logs(round)}/{log_file.name}", log_file.read_bytes(), overwrite=True
        )
    except Exception as exc:  # the log is a convenience; never hide the real outcome
        log.warning("could not upload %s: %s", log_file, exc)


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------


def training_command(cfg: LionConfig, spec_file: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start training for `cfg`."""
    t = cfg.training
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no progress bars in the log
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    program = ["-m", "lion_core.student.train", "--spec", str(spec_file)]
    gpus = _visible_gpus()
    if t.launcher == "python":
        if not gpus:
            cpu_thread_env(1, env)  # this job's share of the cores, idle threads asleep
        return [sys.executable, *program], env
    ranks = t.num_gpus or gpus or 1
    if not gpus:
        # CPU ranks: share the cores between them (and the jobs beside this one).
        cpu_thread_env(ranks, env)
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner"]
    if t.hostfile:
        if not Path(t.hostfile).is_file():
            raise TrainingError(f"training.hostfile: {t.hostfile} does not exist")
        cmd += ["--hostfile", t.hostfile, "--num_nodes", str(t.num_nodes)]
    elif t.num_nodes > 1:
        raise TrainingError("training.num_nodes > 1 needs training.hostfile")
    cmd += ["--num_gpus", str(ranks), "--master_port", str(t.master_port or free_port())]
    cmd += ["--module", "lion_core.student.train", "--spec", str(spec_file)]
    return cmd, env


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
