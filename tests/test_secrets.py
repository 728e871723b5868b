"""API keys reach the endpoints and nothing else (issue 5, section 5).

A round runs through the deployment path (`lion-round/gpu-box` on the process worker) with the
teacher's key in the worker's environment (`api_key_env`) and the referee's and generator's in a
Prefect Secret block (`api_key_secret`). A recording proxy in front of the offline world proves
both keys were sent. Then every byte the session wrote is searched for them, and for the S3
secret key of the worker: the run root in the moto bucket (pools, llm_cache, prefect-results,
run.json), the Prefect server's home with its SQLite database, the worker's home, temporary
folder and log, and, through the API, every flow run's parameters, log and artifact.
Compressed Parquet columns, base64 result records and pickles are decoded before searching.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import io
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import small_config
from prefect_services import (
    API_KEY_ENV,
    FAKE_API_KEY,
    FAKE_AWS_SECRET,
    flow_run_logs,
    paged,
    run_deployment,
    settings,
    wait_for_run,
)

pytestmark = pytest.mark.slow

SECRET_BLOCK = "lion-test-api-key"
BLOCK_KEY = "sk-lion-block-" + secrets.token_hex(12)


# ---- a recording proxy ----------------------------------------------------------------------


class RecordingProxy:
    """Forwards every request to an upstream OpenAI-compatible server and records the
    Authorization header each one carried."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.authorizations: list[str | None] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, body: bytes | None) -> None:
                proxy.authorizations.append(self.headers.get("Authorization"))
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                req = urllib.request.Request(
                    proxy.upstream + self.path, data=body, headers=headers, method=self.command
                )
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        status, payload = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def do_GET(self) -> None:
                self._forward(None)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def proxy(offline_server):
    world = offline_server(judge_noise=0.0)
    proxy = RecordingProxy(world.base_url.removesuffix("/v1"))
    yield proxy
    proxy.stop()


# ---- searching everything written -----------------------------------------------------------


def _views(blob: bytes, depth: int = 0) -> Iterator[bytes]:
    """`blob` and what it decodes to: Parquet tables (any compression), JSON (each string
    value, and its base64 decoding), base64 text, gzip. Pickles keep their strings as UTF-8."""
    yield blob
    if depth > 2:
        return
    if blob[:4] == b"PAR1":
        with contextlib.suppress(Exception):
            table = pq.read_table(io.BytesIO(blob))
            yield json.dumps(table.to_pylist(), default=str).encode()
        return
    if blob[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            yield from _views(gzip.decompress(blob), depth + 1)
        return
    with contextlib.suppress(UnicodeDecodeError, ValueError):
        for text in _strings(json.loads(blob)):
            yield from _views(text.encode(), depth + 1)
            decoded = _b64(text.encode())
            if decoded:
                yield from _views(decoded, depth + 1)
        return
    decoded = _b64(blob)
    if decoded:
        yield from _views(decoded, depth + 1)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _b64(blob: bytes) -> bytes | None:
    stripped = blob.strip()
    if len(stripped) < 16:
        return None
    try:
        return base64.b64decode(stripped.replace(b"\n", b""), validate=True)
    except (binascii.Error, ValueError):
        return None


def _found(blob: bytes, needles: dict[str, bytes]) -> set[str]:
    return {name for view in _views(blob) for name, needle in needles.items() if needle in view}


def _leaks(files: dict[str, bytes], needles: dict[str, str]) -> dict[str, set[str]]:
    encoded = {name: value.encode() for name, value in needles.items()}
    out = {}
    for where, blob in files.items():
        hit = _found(blob, encoded)
        if hit:
            out[where] = hit
    return out


def _local_files(*roots: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _workspace_manifests(worker_home: Path) -> Iterator[Path]:
    yield from (worker_home / "tmp").glob("prefect-workspace-attempt-*/workspace.json")


def _bucket_files(endpoint: str) -> dict[str, bytes]:
    """Every object of every bucket on the moto server."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.invalidate_cache()
    out = {}
    for bucket in fs.ls(""):
        for key in fs.find(bucket):
            out[f"s3://{key}"] = fs.cat(key)
    return out


def test_the_search_finds_a_key_however_it_is_stored(tmp_path):
    """The search itself: a key inside a compressed Parquet column, a base64 pickled result
    record, a gzip file and plain text are all found; a clean file is not."""
    import cloudpickle
    import pandas as pd

    key = "sk-lion-probe-" + secrets.token_hex(8)
    pd.DataFrame({"x": [f"prefix {key} suffix"] * 50}).to_parquet(
        tmp_path / "a.parquet", compression="zstd"
    )
    pickled = base64.b64encode(cloudpickle.dumps({"headers": {"Authorization": key}}))
    (tmp_path / "record.json").write_text(json.dumps({"result": pickled.decode()}))
    (tmp_path / "local-result").write_bytes(base64.encodebytes(cloudpickle.dumps([key])))
    (tmp_path / "log.gz").write_bytes(gzip.compress(f"token={key}".encode()))
    (tmp_path / "clean.txt").write_text("nothing here")
    leaks = _leaks(_local_files(tmp_path), {"probe": key})
    assert set(leaks) == {
        str(tmp_path / n) for n in ("a.parquet", "record.json", "local-result", "log.gz")
    }


def test_api_keys_reach_the_endpoint_and_are_written_nowhere(
    prefect_stack, s3_root, s3_endpoint, proxy
):
    from prefect.blocks.system import Secret

    stack = prefect_stack
    root, options = s3_root
    with settings(stack.env):
        Secret(value=BLOCK_KEY).save(SECRET_BLOCK, overwrite=True)

    config = small_config(
        root,
        name="secrets",
        **{"storage.options": options},
        **{f"{role}.base_url": proxy.base_url for role in ("teacher", "referee", "generator")},
        **{"teacher.api_key_env": API_KEY_ENV},
        **{f"{role}.api_key_secret": SECRET_BLOCK for role in ("referee", "generator")},
    ).model_dump(mode="json", exclude_defaults=True)
    run = run_deployment(stack.env, "lion-round/gpu-box", parameters={"config": config, "round": 1})
    run = wait_for_run(stack.env, run.id, timeout=300, log=stack.worker_log)
    assert run.state.is_completed(), f"{run.state_name}: {run.state.message}"

    # Both keys were used: the teacher's from the environment, the others' from the block.
    sent = set(proxy.authorizations)
    assert f"Bearer {FAKE_API_KEY}" in sent and f"Bearer {BLOCK_KEY}" in sent, sent
    assert sent <= {f"Bearer {FAKE_API_KEY}", f"Bearer {BLOCK_KEY}"}, sent

    # Prefect's process worker hands the flow-run process its environment (keys included)
    # through a private (0600) manifest in a temporary folder, removed when the attempt ends:
    # it must be gone before anything is searched.
    attempts = list(_workspace_manifests(stack.worker_home))
    deadline = time.monotonic() + 60
    while attempts and time.monotonic() < deadline:
        time.sleep(0.5)
        attempts = list(_workspace_manifests(stack.worker_home))
    assert not attempts, "the worker left its flow-run environment manifest behind"

    needles = {"env key": FAKE_API_KEY, "block key": BLOCK_KEY, "aws secret": FAKE_AWS_SECRET}
    # Files: the moto bucket(s), the server's home (SQLite database and its journal, server
    # log), the worker's home (its log with the flow runs' output, local results, TMPDIR).
    # Prefect keeps block documents Fernet-encrypted in the database, so the Secret block's
    # own value is not in its bytes either: nothing needs excluding.
    files = _bucket_files(s3_endpoint) | _local_files(stack.server.home, stack.worker_home)
    assert any(name.startswith(f"{root}/llm_cache/") for name in files)
    assert any(name.startswith(f"{root}/prefect-results/") for name in files)
    assert str(stack.server.database) in files and str(stack.worker_log) in files
    assert _leaks(files, needles) == {}
    # ...while what the run did record is plainly there: the search would have seen a key.
    database = {k: v for k, v in files.items() if k.startswith(str(stack.server.database))}
    assert _leaks(database, {"endpoint": proxy.base_url, "block name": SECRET_BLOCK})

    # Through the API: every flow run's parameters, logs and artifacts.
    runs = paged(stack.env, "read_flow_runs")
    artifacts = paged(stack.env, "read_artifacts")
    logs = flow_run_logs(stack.env, [r.id for r in runs])
    assert any(r.id == run.id for r in runs) and logs and artifacts
    api_text = {
        "parameters": json.dumps([r.parameters for r in runs]).encode(),
        "logs": "\n".join(entry.message for entry in logs).encode(),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]).encode(),
    }
    assert _leaks(api_text, needles) == {}

    # The block holds the key (the one place it may be), readable only through the API.
    with settings(stack.env):
        assert Secret.load(SECRET_BLOCK).get() == BLOCK_KEY
