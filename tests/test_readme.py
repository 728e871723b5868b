"""The README's tour, executed: every command of its "A short tour" block runs, in order, in a
fresh folder, through the real `lion` command line (this checkout's code) against a Prefect test
server, and so does its pandas snippet. Runs are shrunk with extra `--set`s (tiny pools and
student, one round, a few training steps); the commands themselves are the README's."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_STUDENT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

# What makes the demo's config small enough for a test: written into my-run.yaml by the
# tour's first command, so every later command inherits it.
TINY = {
    "pools.offline_seeds": "16",
    "pools.new_per_round": "6",
    "student.tiny": "{" + ", ".join(f"{k}: {v}" for k, v in TINY_STUDENT.items()) + "}",
    "student.generation.max_new_tokens": "12",
    "training.launcher": "python",
    "training.max_steps": "4",
    "training.max_length": "128",
    "training.micro_batch_size": "8",
    "training.save_steps": "2",
    "referee.max_tokens": "200",
    "evaluation.sample": "6",
    "evaluation.bootstrap": "50",
}


def readme_blocks(language: str) -> dict[str, list[str]]:
    """The README's fenced blocks of `language`, by the heading they sit under."""
    blocks: dict[str, list[str]] = {}
    heading = ""
    pattern = re.compile(r"^(#+ [^\n]*)$|^```" + language + r"\n(.*?)^```", re.M | re.S)
    for match in pattern.finditer(README.read_text()):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.setdefault(heading, []).extend(match.group(2).splitlines())
    return blocks


def tour_commands() -> list[list[str]]:
    lines = readme_blocks("bash")["A short tour"]
    commands = [shlex.split(line, comments=True) for line in lines]
    return [c for c in commands if c]


def shrink(argv: list[str]) -> list[str]:
    """The README command with test-sized settings added (the demo's root swapped for the tour's
    own run: the tour comes after `make demo`, which a test does not repeat)."""
    argv = ["lion-runs/my-run" if a == "lion-runs/demo" else a for a in argv]
    command = argv[1]
    if command == "demo":
        argv += ["--rounds", "1"]
        for key, value in TINY.items():
            argv += ["--set", f"{key}={value}"]
    elif command == "run":  # one round; the line that adds rounds to a root: one more
        more = [i for i, a in enumerate(argv) if a.startswith("rounds=")]
        for i in more:
            argv[i] = "rounds=2"
        if not more:
            argv += ["--set", "rounds=1"]
    elif command == "referee-check":
        argv += ["--pairs", "2"]
    elif command == "serve-offline":
        argv = [a if a != "8765" else "0" for a in argv]
    return argv


def test_readme_tour_runs(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    commands = tour_commands()
    assert [c[1] for c in commands[:3]] == ["demo", "referee-check", "run"]
    for argv in commands:
        assert argv[0] == ".venv/bin/lion", argv
        cmd = [sys.executable, "-m", "flows.cli", *shrink(argv)[1:]]
        if argv[1] == "serve-offline":  # serves until stopped: check that it comes up
            proc = subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True,
            )  # fmt: skip
            try:
                assert "listening on http://" in proc.stdout.readline()
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            continue
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr[-3000:]}"
        if argv[1] == "run":
            assert "student_to_teacher" in done.stdout

    assert (tmp_path / "lion-runs" / "my-run" / "run.json").is_file()
    assert (tmp_path / "lion-runs" / "one-epoch" / "run.json").is_file()

    # the pandas snippet, on the tour's run (round 2's pools are round 1's output)
    snippet = "\n".join(readme_blocks("python")["A short tour"])
    assert "pd.read_parquet" in snippet
    snippet = snippet.replace("lion-runs/demo", "lion-runs/my-run")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
