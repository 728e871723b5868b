"""`train_student`: fine-tune the student in a subprocess and return the trained model's URI.

The training program (train.py) runs under the `deepspeed` launcher (several GPUs, several nodes
through a hostfile, or CPU ranks) or as one plain `python` process. It is started in its own
process group; its output is streamed line by line to the caller's logger; and the whole group
is killed when the caller is interrupted, cancelled (SIGTERM, KeyboardInterrupt, any exception),
times out, or dies (PR_SET_PDEATHSIG), so no orphaned rank keeps holding a GPU.

Training happens in a local folder; checkpoints and the final model are committed to the run's
storage (a local folder or s3://) with completion markers. A second call after a crash resumes
from the latest committed checkpoint; a call after success returns at once.
"""

from __future__ import annotations

import collections
import ctypes
import io
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import fsspec
import pandas as pd

from lion_core.config import LionConfig
from lion_core.errors import DataError, TrainingError
from lion_core.pools import RunStore
from lion_core.student.checkpoints import (
    COMPLETE,
    checkpoints_rel,
    download_dir,
    is_complete,
    logs_rel,
    resolve_model,
    scan_checkpoints,
    scratch_for,
    student_rel,
)
from lion_core.student.data import check_train_frame

log = logging.getLogger(__name__)

TAIL_LINES = 60
KILL_GRACE_S = 10.0


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
    final_rel = student_rel(round)
    if is_complete(storage, final_rel):
        logger.info("round %d student already trained: %s", round, storage.uri(final_rel))
        return storage.uri(final_rel)

    options = cfg.storage.options
    work = scratch_for(storage.uri(f"round={round}"), "train")
    frame = _read_train_data(train_data_uri, options)
    train_file = work / "train.parquet"
    frame.to_parquet(train_file, index=False)

    # -- where the Trainer writes: straight into local storage, else scratch then upload ----
    ckpt_rel = checkpoints_rel(round)
    steps, incomplete = scan_checkpoints(storage, round)
    for name in incomplete:  # a save that was killed half-way
        storage.delete(f"{ckpt_rel}/{name}", recursive=True)
    if storage.exists(final_rel):  # a final save that was killed half-way
        storage.delete(final_rel, recursive=True)
    if storage.is_local:
        output_dir = Path(storage.path(ckpt_rel))
        final_dir = Path(storage.path(final_rel))
    else:
        output_dir, final_dir = work / "checkpoints", work / "final"
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
        "resume": str(resume) if resume else None,
        "storage_root": storage.uri(),
        "storage_options": options,
        "checkpoints_rel": ckpt_rel,
        "student_rel": final_rel,
        "launcher": cfg.training.launcher,
    }
    spec_file = work / "job.json"
    spec_file.write_text(json.dumps(spec, indent=2))

    cmd, env = training_command(cfg, spec_file)
    logger.info("round %d: training %s -> %s", round, init_uri, storage.uri(final_rel))
    logger.info("command: %s", " ".join(cmd))
    log_file = work / f"train-{time.strftime('%Y%m%dT%H%M%S')}.log"
    try:
        rc, tail = run_process_group(
            cmd,
            env=env,
            log_file=log_file,
            logger=logger,
            timeout=cfg.training.timeout,
            should_stop=should_stop,
        )
    finally:
        _upload_log(storage, round, log_file)
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
    if not storage.is_local:
        shutil.rmtree(work, ignore_errors=True)
    return storage.uri(final_rel)


def init_uri_for(cfg: LionConfig, store: RunStore, round: int) -> str:
    """The model round `round` starts from: the base student (round 0) for
    `training.init_from: base`, the previous round's student for `previous`."""
    k = round - 1 if cfg.training.init_from == "previous" else 0
    return store.storage.uri(student_rel(max(k, 0)))


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
    return check_train_frame(frame, source=uri)


def _upload_log(storage, round: int, log_file: Path) -> None:
    if not log_file.exists():
        return
    try:
        storage.write_bytes(
            f"{logs_rel(round)}/{log_file.name}", log_file.read_bytes(), overwrite=True
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
    if t.launcher == "python":
        return [sys.executable, *program], env
    ranks = t.num_gpus or _visible_gpus() or 1
    if not _visible_gpus():
        # CPU ranks: share the cores between them instead of oversubscribing.
        env.setdefault("OMP_NUM_THREADS", cpu_threads(ranks))
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


def cpu_threads(processes: int) -> str:
    """OMP_NUM_THREADS for each of `processes` CPU processes sharing this machine's cores
    (instead of each oversubscribing all of them)."""
    return str(max(1, (os.cpu_count() or 1) // processes))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# Running it as a process group
# ------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the process that started us dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_process_group(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    log_file: Path | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, list[str]]:
    """Run `cmd` in a new process group, streaming its output; return (exit code, last lines).

    The group (the launcher and every rank it started) is killed (SIGTERM, then SIGKILL after
    a grace period) on timeout, when `should_stop()` turns True, and on any exception or
    signal in the caller. Timeout and stop raise TrainingError.
    """
    codes, tail = run_process_groups(
        [(cmd, env)],
        cwd=cwd,
        log_file=log_file,
        logger=logger,
        timeout=timeout,
        should_stop=should_stop,
    )
    return codes[0], tail


def run_process_groups(
    jobs: Sequence[tuple[Sequence[str], dict[str, str] | None]],
    *,
    cwd: str | Path | None = None,
    log_file: Path | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefix: bool = False,
) -> tuple[list[int], list[str]]:
    """`run_process_group` for several commands at once (e.g. one generation worker per GPU),
    each in its own process group; all are killed if the caller fails or any check trips.
    With `prefix`, each streamed line starts with the job's index."""
    logger = logger or log
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    procs: list[subprocess.Popen] = []
    restore = _terminate_on_sigterm()
    sink = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
    try:
        for i, (cmd, env) in enumerate(jobs):
            proc = subprocess.Popen(
                list(cmd),
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own session and process group
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                text=True,
                errors="replace",
                bufsize=1,
            )
            procs.append(proc)
            threading.Thread(target=_pump, args=(i, proc, lines), daemon=True).start()
        started = last_poll = time.monotonic()
        open_streams = len(procs)
        while open_streams:
            try:
                i, line = lines.get(timeout=0.5)
            except queue.Empty:
                i, line = -1, ""
            if line is None:
                open_streams -= 1
            elif line:
                text = f"[{i}] {line}" if prefix else line
                tail.append(text)
                logger.info("%s", text)
                if sink:
                    sink.write(text + "\n")
                    sink.flush()
            if timeout is not None and time.monotonic() - started > timeout:
                raise TrainingError(
                    f"timed out after {timeout:.0f} s and was killed; last lines:\n"
                    + "\n".join(tail)
                )
            if should_stop is not None and time.monotonic() - last_poll >= 0.5:
                last_poll = time.monotonic()
                if should_stop():
                    raise TrainingError("stopped on request; last lines:\n" + "\n".join(tail))
        for proc in procs:
            proc.wait(timeout=KILL_GRACE_S)
        return [p.returncode for p in procs], list(tail)
    finally:
        for proc in procs:
            if proc.poll() is None or _group_alive(proc.pid):
                kill_group(proc)
        restore()
        if sink:
            sink.close()


def _pump(i: int, proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put((i, line.rstrip("\n")))
    lines.put((i, None))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL whatever is left after a grace."""
    pgid = proc.pid  # the leader of its own group (start_new_session)
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _terminate_on_sigterm() -> Callable[[], None]:
    """While training runs, turn SIGTERM in the caller into an exception, so the `finally` that
    kills the group runs (the default action would end the caller without cleaning up).
    Only from the main thread, and only if nobody else handles SIGTERM already."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
