"""The offline world in a process of its own (`lion serve-offline`), for the benchmarks that
measure a client or a round against it: the world's CPU is then not the client's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def serve_offline(offline: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start `lion serve-offline --port 0` with `offline` as its config section; return the
    process and its base URL. Its stderr goes to `workdir/serve-offline.err`."""
    cfg = workdir / "offline.yaml"
    cfg.write_text(yaml.safe_dump({"offline": offline}))
    err_path = workdir / "serve-offline.err"
    lion = Path(sys.executable).parent / "lion"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [str(lion), "serve-offline", "--port", "0", "-c", str(cfg)],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
        )  # fmt: skip
    assert proc.stdout is not None
    match = re.search(r"(http://\S+/v1)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit(f"lion serve-offline did not start: {err_path.read_text()[-2000:]}")
    return proc, match.group(1)
