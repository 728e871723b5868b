"""Supervised process groups: the training launcher, generation workers, any child job.

Each command runs in its own process session; its output is streamed line by line to the
caller's logger (and a log file); and the whole group is killed when the caller is interrupted,
cancelled (SIGTERM, KeyboardInterrupt, any exception), times out, or dies (PR_SET_PDEATHSIG), so
no orphaned rank keeps holding a GPU.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path

from lion_core.errors import ConfigError, LionError, SupervisionError

log = logging.getLogger(__name__)

TAIL_LINES = 60
KILL_GRACE_S = 10.0

# DeepSpeed's own log lines: `[2025-01-01 12:00:00,000] [INFO] [launch.py:152:main] ...`
_DEEPSPEED_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[(?P<level>[A-Z]+)\] \[(?P<file>[\w.]+\.py):\d+:"
)
_LAUNCHER_FILES = {"runner.py", "launch.py", "launcher_helper.py", "real_accelerator.py"}


def is_deepspeed_chatter(line: str) -> bool:
    """Whether `line` is DeepSpeed talking about itself: its INFO/DEBUG lines, and the
    launcher's and accelerator detection's warnings ("Unable to find hostfile", "Setting
    accelerator to CPU"). Its errors and every other line are not."""
    m = _DEEPSPEED_LINE.match(line)
    if m is None:
        return False
    level = m.group("level")
    return level in ("DEBUG", "INFO") or (level == "WARNING" and m.group("file") in _LAUNCHER_FILES)


class _DeepSpeedChatter(logging.Filter):
    """`is_deepspeed_chatter` for records of DeepSpeed's own logger, in this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return record.levelno == logging.WARNING and record.filename not in _LAUNCHER_FILES


def quiet_deepspeed_logger() -> None:
    """Drop DeepSpeed's chatter in this process (transformers imports DeepSpeed when it saves a
    model, which warns "Setting accelerator to CPU" on stdout). DeepSpeed sets its logger's
    level and handler when it is imported; a filter on the logger survives that."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DeepSpeedChatter) for f in logger.filters):
        logger.addFilter(_DeepSpeedChatter())


# Threads per CPU process, overriding the sizing below (e.g. LION_CPU_THREADS=1).
CPU_THREADS_ENV = "LION_CPU_THREADS"
# Jobs sharing this machine's cores side by side (two runs, the test suite's workers): each
# sizes its processes' threads to its share.
CPU_WORKERS_ENV = "LION_CPU_WORKERS"


def cpu_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container's `--cpus`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{name}: expected a whole number >= 1, got {value!r}")
    return number


def cpu_threads(processes: int = 1) -> int:
    """Threads for each of `processes` CPU processes one job runs at once (ranks, generation
    workers): LION_CPU_THREADS when set; else the cores (`cpu_cores`) shared between them and
    the LION_CPU_WORKERS jobs (default 1) that run side by side; at least one.

    Oversubscribed cores cost far more than their share: OpenMP threads wait for each other at
    every parallel region, spinning, so one descheduled thread stalls the rest (benchmarks/
    cpu_oversubscription.py, 2 cores: two demo trainers side by side, 2 spinning threads each,
    0.78-0.93 s per step, 5x one alone; 0.21-0.24 s with their threads asleep when idle)."""
    threads = _positive_env(CPU_THREADS_ENV)
    if threads is not None:
        return threads
    jobs = _positive_env(CPU_WORKERS_ENV) or 1
    return max(1, cpu_cores() // (max(1, processes) * jobs))


def cpu_thread_env(
    processes: int = 1, env: MutableMapping[str, str] | None = None
) -> MutableMapping[str, str]:
    """The thread settings of a CPU child process (`processes` of them at once), added to
    `env` (default: a copy of this process's environment) where it sets none:
    OMP_NUM_THREADS = cpu_threads(processes), and OMP_WAIT_POLICY=PASSIVE, so that threads
    waiting at a barrier sleep instead of spinning on cores another process needs."""
    env = dict(os.environ) if env is None else env
    env.setdefault("OMP_NUM_THREADS", str(cpu_threads(processes)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def size_torch_threads(processes: int = 1) -> int:
    """Set this process's torch intra-op threads for CPU work (generation in-process, the
    student server) to `cpu_threads(processes)`, unless OMP_NUM_THREADS fixes them; returns
    the threads in use. (OMP_WAIT_POLICY cannot change once torch is loaded: a process that
    wants it sets it in its environment before it starts, as `cpu_thread_env` does.)"""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        threads = cpu_threads(processes)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    error: type[LionError] = SupervisionError,
    quiet: Callable[[str], bool] | None = None,
) -> tuple[int, list[str]]:
    """Run `cmd` in a new process group, streaming its output; return (exit code, last lines).

    Every line goes to `log_file` and the returned tail; lines for which `quiet(line)` is True
    (e.g. `is_deepspeed_chatter`) do not go to `logger`.

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
        error=error,
        quiet=quiet,
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
    error: type[LionError] = SupervisionError,
    quiet: Callable[[str], bool] | None = None,
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
                if quiet is None or not quiet(line):
                    logger.info("%s", text)
                if sink:
                    sink.write(text + "\n")
                    sink.flush()
            if timeout is not None and time.monotonic() - started > timeout:
                raise error(
                    f"timed out after {timeout:.0f} s and was killed; last lines:\n"
                    + "\n".join(tail)
                )
            if should_stop is not None and time.monotonic() - last_poll >= 0.5:
                last_poll = time.monotonic()
                if should_stop():
                    raise error("stopped on request; last lines:\n" + "\n".join(tail))
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


class ProcessGroup:
    """One command running in the background in its own process group (a model server), with
    the same supervision as `run_process_group`: its output streamed line by line to `logger`
    and `log_file` (the last lines kept for errors), SIGTERM to it if the caller dies
    (PR_SET_PDEATHSIG), and the whole group killed by `stop()` — which `with` calls on success,
    on any exception and on KeyboardInterrupt (SIGTERM in the caller's main thread becomes an
    exception meanwhile, so it is covered too).

    >>> with ProcessGroup(["vllm", "serve", path], logger=log) as server:
    ...     ...  # server.alive(), server.tail()
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        log_file: Path | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        prefix: str = "",
    ) -> None:
        self.cmd = list(cmd)
        self.env, self.cwd, self.log_file = env, cwd, log_file
        self.logger = logger or log
        self.prefix = prefix
        self.proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pump: threading.Thread | None = None
        self._restore: Callable[[], None] = lambda: None

    def start(self) -> ProcessGroup:
        if self.proc is not None:
            return self
        self._restore = _terminate_on_sigterm()
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                text=True,
                errors="replace",
                bufsize=1,
            )
        except BaseException:
            self._restore()
            raise
        self._pump = threading.Thread(target=self._stream, name="lion-group-log", daemon=True)
        self._pump.start()
        return self

    def _stream(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        sink = open(self.log_file, "a", encoding="utf-8") if self.log_file else None  # noqa: SIM115
        try:
            for line in self.proc.stdout:
                text = self.prefix + line.rstrip("\n")
                self._tail.append(text)
                self.logger.info("%s", text)
                if sink:
                    sink.write(text + "\n")
                    sink.flush()
        finally:
            if sink:
                sink.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def tail(self) -> list[str]:
        return list(self._tail)

    def stop(self) -> None:
        """Kill the group (SIGTERM, SIGKILL after a grace) and finish streaming its output."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None or _group_alive(self.proc.pid):
                kill_group(self.proc)
            if self._pump is not None:
                self._pump.join(timeout=5)
        finally:
            self._restore()
            self._restore = lambda: None

    def __enter__(self) -> ProcessGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
