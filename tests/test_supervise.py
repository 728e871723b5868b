"""Supervised process groups: what reaches the caller's logger, the log file and the tail."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lion_core.errors import ConfigError
from lion_core.ops.supervise import (
    cpu_cores,
    cpu_thread_env,
    cpu_threads,
    is_deepspeed_chatter,
    run_process_group,
    size_torch_threads,
)

LAUNCHER = [
    "[2026-11-26 13:47:04,154] [WARNING] [real_accelerator.py:213:get_accelerator] Setting "
    "accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    "[2026-11-26 13:47:04,518] [WARNING] [runner.py:214:fetch_hostfile] Unable to find "
    "hostfile, will proceed with training with local resources only.",
    "[2026-11-26 13:47:06,545] [INFO] [launch.py:152:main] WORLD INFO DICT: {'localhost': [0]}",
    "[2026-11-26 13:47:35,564] [INFO] [launch.py:285:main] Process 22602 exits successfully.",
]
KEPT = [
    "[lion-train] step 20/60 loss 4.953 learning_rate 0.0008179 grad_norm 1.576 elapsed 6.8s",
    "[2026-11-26 14:18:35,631] [ERROR] [launch.py:259:sigkill_handler] ['python', '-m', "
    "'lion_core.student.train'] exits with return code = 1",
    "[2026-11-26 14:18:35,631] [WARNING] [stage3.py:2117:step] 3 pytorch allocator cache flushes",
    "Traceback (most recent call last):",
]


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_deepspeed_chatter_is_told_apart():
    assert all(is_deepspeed_chatter(line) for line in LAUNCHER)
    assert not any(is_deepspeed_chatter(line) for line in KEPT)


def test_chatter_goes_to_the_log_file_and_the_tail_only(tmp_path):
    logger = logging.getLogger("test-supervise")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    recorder = Recorder()
    logger.addHandler(recorder)
    script = "import sys\nfor line in sys.argv[1:]: print(line)\nsys.exit(3)"
    lines = [LAUNCHER[0], KEPT[0], LAUNCHER[2], KEPT[1]]
    log_file = tmp_path / "train.log"
    rc, tail = run_process_group(
        [sys.executable, "-c", script, *lines],
        log_file=log_file,
        logger=logger,
        quiet=is_deepspeed_chatter,
    )
    assert rc == 3
    assert recorder.lines == [KEPT[0], KEPT[1]]  # the error surfaces
    assert log_file.read_text().splitlines() == lines
    assert tail == lines  # a failure's message shows everything that came before


def test_deepspeed_stays_quiet_in_a_process_that_saves_models():
    """transformers imports DeepSpeed when it saves or loads a model; its accelerator detection
    would print a warning on stdout. lion_core.student.model installs the filter first."""
    import subprocess

    script = (
        "import lion_core.student.model\n"
        "from deepspeed.accelerator import get_accelerator\n"
        "from deepspeed.utils import logger\n"
        "get_accelerator()\n"
        "logger.info('launcher talk')\n"
        "logger.error('a real problem')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "a real problem" in done.stdout
    assert "Setting accelerator" not in done.stdout and "launcher talk" not in done.stdout


# ---- CPU threads ------------------------------------------------------------------------------


def _without_thread_settings(monkeypatch) -> None:
    for name in ("LION_CPU_THREADS", "LION_CPU_WORKERS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)


def test_cpu_threads_share_the_cores_between_processes_and_jobs(monkeypatch):
    _without_thread_settings(monkeypatch)
    cores = cpu_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert cpu_threads() == cores
    assert cpu_threads(2) == max(1, cores // 2)
    assert cpu_threads(4 * cores) == 1  # never none
    monkeypatch.setenv("LION_CPU_WORKERS", "2")  # two jobs side by side
    assert cpu_threads() == max(1, cores // 2) and cpu_threads(2) == max(1, cores // 4)
    monkeypatch.setenv("LION_CPU_THREADS", "3")  # the override wins
    assert cpu_threads() == cpu_threads(8) == 3
    monkeypatch.setenv("LION_CPU_THREADS", "zero")
    with pytest.raises(ConfigError, match="LION_CPU_THREADS: expected a whole number >= 1"):
        cpu_threads()


def test_a_cpu_child_gets_its_share_asleep_when_idle_and_settings_it_was_given_win(monkeypatch):
    _without_thread_settings(monkeypatch)
    monkeypatch.setenv("LION_CPU_THREADS", "1")
    env = cpu_thread_env(2, {})
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    given = {"OMP_NUM_THREADS": "5", "OMP_WAIT_POLICY": "ACTIVE"}
    assert cpu_thread_env(2, dict(given)) == given
    # the training launcher on the CPU, both launchers
    from lion_core.config import LionConfig
    from lion_core.student.launch import training_command

    for launcher in ("deepspeed", "python"):
        cfg = LionConfig().with_overrides({"training.launcher": launcher})
        _, env = training_command(cfg, Path("job.json"))
        assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE", launcher


def test_the_thread_settings_reach_torch_in_a_child_and_in_process(monkeypatch):
    _without_thread_settings(monkeypatch)
    monkeypatch.setenv("LION_CPU_THREADS", "1")
    probe = "import torch; print(torch.get_num_threads())"
    child = subprocess.run(
        [sys.executable, "-c", probe], env=cpu_thread_env(), capture_output=True, text=True
    )
    assert child.stdout.strip() == "1", child.stderr[-2000:]

    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert size_torch_threads() == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # fixed by the environment: left alone
        torch.set_num_threads(2)
        assert size_torch_threads() == 2
    finally:
        torch.set_num_threads(before)
