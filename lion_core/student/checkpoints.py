"""Model folders in the run's storage: completion markers, round layout, local copies.

A model folder (a student, a training checkpoint) is trusted only once its `_COMPLETE` marker is
written, and the marker is always written last. A crash half-way through an upload therefore
leaves a folder nobody reads; the next attempt deletes it and writes it again.

Where the folders are is `lion_core.run.layout`'s business (students, checkpoints, logs).

A model folder may also hold only `source.json` ({"model": <hub id or path>, "revision": ...})
when the base model is used where it is (a hub id or a path outside the run) instead of copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from lion_core.run import layout
from lion_core.run.storage import Storage

COMPLETE = "_COMPLETE"
SOURCE = "source.json"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def is_complete(storage: Storage, rel: str) -> bool:
    return storage.exists(f"{rel}/{COMPLETE}")


def mark_complete(storage: Storage, rel: str, info: dict | None = None) -> None:
    """Write the completion marker of folder `rel` (last, after everything else is in place)."""
    payload = {"completed_at": time.time(), **(info or {})}
    storage.write_json(f"{rel}/{COMPLETE}", payload, overwrite=True)


def scan_checkpoints(storage: Storage, k: int) -> tuple[list[int], list[str]]:
    """Round `k`'s checkpoint folders, listed once: the global steps of the committed ones,
    ascending, and the names of those that never got their marker (a killed save)."""
    steps, incomplete = [], []
    for name in storage.listdir(layout.checkpoints(k)):
        m = CHECKPOINT_DIR.match(name)
        if m and is_complete(storage, f"{layout.checkpoints(k)}/{name}"):
            steps.append(int(m.group(1)))
        elif m:
            incomplete.append(name)
    return sorted(steps), incomplete


def complete_checkpoints(storage: Storage, k: int) -> list[int]:
    """Global steps of round `k`'s committed checkpoints, ascending."""
    return scan_checkpoints(storage, k)[0]


def storage_and_rel(uri: str, options: dict | None = None) -> tuple[Storage, str]:
    """A Storage for the parent of `uri`, and `uri`'s name relative to it."""
    uri = uri.rstrip("/")
    parent, _, name = uri.rpartition("/")
    return Storage(parent or "/", options), name


def scratch_root() -> Path:
    """Local scratch space for training and downloads: $LION_SCRATCH, else the system temp."""
    root = os.environ.get("LION_SCRATCH") or os.path.join(tempfile.gettempdir(), "lion-scratch")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_for(uri: str, *parts: str) -> Path:
    """A scratch folder that is stable for the same `uri` (so a retry finds its downloads)."""
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    path = scratch_root().joinpath(key, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model(uri: str, options: dict | None = None) -> tuple[str, str | None]:
    """(something `from_pretrained` can load, hub revision or None) for model folder `uri`: a
    local folder, or the hub id / path and revision recorded in its `source.json`. Remote
    folders are downloaded to scratch once."""
    if "://" not in uri and not os.path.isdir(uri):
        return uri, None  # a hub id given directly
    storage, rel = storage_and_rel(uri, options)
    if storage.exists(f"{rel}/{SOURCE}"):
        source = storage.read_json(f"{rel}/{SOURCE}")
        return str(source["model"]), source.get("revision")
    if storage.is_local:
        return storage.path(rel), None
    local = scratch_for(uri) / "model"
    if not (local / COMPLETE).exists():
        download_dir(storage, rel, local)
    return str(local), None


DIGEST_SAMPLE = 1 << 20  # bytes read from each end of a large file without a marker


def content_digest(uri: str, options: dict | None = None) -> str:
    """A digest of what model folder `uri` holds, cheap at any size (the served student's
    answers are cached under it, so a retrained student never reuses an older one's answers).

    A committed folder: its `_COMPLETE` marker (written once per save, with the time) and its
    `source.json`; a folder without a marker (a user's own model): every file's name and size,
    the content of files up to 2 MiB (configs, tokenizer) and the first and last MiB of larger
    ones (weights); a hub id: the id."""
    h = hashlib.sha256()
    if "://" not in uri and not os.path.isdir(uri):
        h.update(json.dumps({"hub": uri}).encode())
        return h.hexdigest()
    storage, rel = storage_and_rel(uri, options)
    if storage.exists(f"{rel}/{COMPLETE}"):
        for name in (COMPLETE, SOURCE):
            if storage.exists(f"{rel}/{name}"):
                h.update(name.encode() + b"\0" + storage.read_bytes(f"{rel}/{name}") + b"\0")
        return h.hexdigest()
    local = Path(materialize(uri, options))
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(local)}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 2 * DIGEST_SAMPLE:
                h.update(f.read())
            else:
                h.update(f.read(DIGEST_SAMPLE))
                f.seek(size - DIGEST_SAMPLE)
                h.update(f.read(DIGEST_SAMPLE))
    return h.hexdigest()


def materialize(uri: str, options: dict | None = None) -> str:
    """What `from_pretrained` loads for model folder `uri` (`resolve_model` without revision)."""
    return resolve_model(uri, options)[0]


def download_dir(storage: Storage, rel: str, local: Path) -> Path:
    """Download folder `rel` to `local` via a temporary folder renamed into place, so a local
    copy that exists is complete (its `_COMPLETE` marker cannot arrive before the rest)."""
    tmp = local.with_name(f"{local.name}.tmp-{uuid.uuid4().hex[:8]}")
    storage.get_dir(rel, tmp)
    if not (local / COMPLETE).exists():
        shutil.rmtree(local, ignore_errors=True)
        try:
            os.replace(tmp, local)
        except OSError:  # another process put its complete copy there first
            if not (local / COMPLETE).exists():
                raise
    shutil.rmtree(tmp, ignore_errors=True)
    return local


def write_json_file(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
