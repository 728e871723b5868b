"""A run's storage: a local folder or an object store (s3:// through s3fs), via fsspec.

The one rule: a committed file is complete and immutable. Local writes go to a temporary file in
the same folder and are then hard-linked into place (atomic, and fails if the target exists);
object-store writes are single PUTs, which an S3-compatible store makes visible only once whole.
A crash therefore leaves either nothing or a temporary file no reader looks at; a failed write
(a full disk) removes its own temporary file, and the next write to a folder removes temporary
files there that are stale: left by a dead process on this host, or older than an hour.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from lion_core.errors import SnapshotExistsError, StorageError

TMP_MARK = ".tmp-"
# A temporary file older than this is stale even when its writer cannot be proven dead (another
# host, or a name without a writer): no single local write takes an hour.
STALE_TMP_SECONDS = 3600.0


class Storage:
    """Files under one root URI. Paths given to methods are relative to the root, '/'-separated."""

    def __init__(self, root: str, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        root = str(root)
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        self.fs, path = fsspec.core.url_to_fs(root, **self.options)
        self.protocol = _protocol(self.fs)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root_path = path.rstrip("/")

    # ---- paths -------------------------------------------------------------------------

    def path(self, rel: str = "") -> str:
        """The filesystem path (no protocol) of `rel`."""
        return posixpath.join(self.root_path, rel) if rel else self.root_path

    def relative(self, uri: str) -> str | None:
        """`uri` (a path or URI) relative to the root, if it is under it, else None."""
        root = self.uri().rstrip("/")
        if "://" not in uri and self.is_local:
            uri = str(Path(uri).expanduser().resolve())
        uri = uri.rstrip("/")
        if uri == root:
            return ""
        return uri[len(root) + 1 :] if uri.startswith(root + "/") else None

    def uri(self, rel: str = "") -> str:
        """The full URI of `rel` (a plain path for local storage)."""
        if self.is_local:
            return self.path(rel)
        return f"{self.protocol}://{self.path(rel)}"

    # ---- queries -----------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.exists(self.path(rel))
        except Exception as exc:  # network errors surface here for s3
            raise StorageError(f"cannot check {self.uri(rel)}: {exc}") from exc

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under `rel`, without temporary files; [] if missing."""
        full = self.path(rel)
        try:
            if not self.fs.exists(full):
                return []
            entries = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"cannot list {self.uri(rel)}: {exc}") from exc
        names = [posixpath.basename(e.rstrip("/")) for e in entries]
        return sorted(n for n in names if TMP_MARK not in n)

    # ---- reading -----------------------------------------------------------------------

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise StorageError(f"missing file: {self.uri(rel)}") from None
        except Exception as exc:
            raise StorageError(f"cannot read {self.uri(rel)}: {exc}") from exc

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise StorageError(f"{self.uri(rel)} is not valid JSON: {exc}") from exc

    def read_parquet(self, rel: str, schema: pa.Schema | None = None) -> pa.Table:
        data = self.read_bytes(rel)
        try:
            return pq.read_table(io.BytesIO(data), schema=schema)
        except Exception as exc:
            raise StorageError(f"{self.uri(rel)} is not a readable Parquet file: {exc}") from exc

    def parquet_rows(self, rel: str, data: bytes | None = None) -> int:
        """The row count in a Parquet file's footer (`data`: its bytes, when already read),
        without reading the rows; a damaged file is a StorageError naming it."""
        try:
            if data is not None:
                return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
            with self.fs.open(self.path(rel)) as fh:
                return pq.ParquetFile(fh).metadata.num_rows
        except Exception as exc:
            raise StorageError(f"{self.uri(rel)} is not a readable Parquet file: {exc}") from exc

    # ---- writing -----------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes, *, overwrite: bool = False) -> str:
        """Commit `data` at `rel` atomically. Without `overwrite`, an existing file is an error.
        Any failure is a StorageError naming the file."""
        full = self.path(rel)
        try:
            if self.is_local:
                return self._write_local(full, data, overwrite)
            if not overwrite and self.fs.exists(full):
                raise SnapshotExistsError(f"refusing to overwrite committed {self.uri(rel)}")
            self.fs.pipe_file(full, data)
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"cannot write {self.uri(rel)}: {exc}") from exc
        return self.uri(rel)

    def _write_local(self, full: str, data: bytes, overwrite: bool) -> str:
        folder = os.path.dirname(full)
        os.makedirs(folder, exist_ok=True)
        remove_stale_tmp(folder)
        tmp = os.path.join(folder, f".{os.path.basename(full)}{TMP_MARK}{_writer_tag()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, full)
            else:
                try:
                    os.link(tmp, full)  # atomic, and never clobbers
                except FileExistsError:
                    raise SnapshotExistsError(f"refusing to overwrite committed {full}") from None
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
        return full

    def write_json(self, rel: str, obj: Any, *, overwrite: bool = False) -> str:
        try:
            data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        except Exception as exc:  # circular references, keys that do not sort
            raise StorageError(
                f"cannot write {self.uri(rel)}: not JSON-serializable: {exc}"
            ) from exc
        return self.write_bytes(rel, data, overwrite=overwrite)

    def write_parquet(self, rel: str, table: pa.Table, *, overwrite: bool = False) -> str:
        try:
            data = parquet_bytes(table)
        except Exception as exc:
            raise StorageError(
                f"cannot write {self.uri(rel)}: cannot encode Parquet: {exc}"
            ) from exc
        return self.write_bytes(rel, data, overwrite=overwrite)

    def delete(self, rel: str, *, recursive: bool = False) -> None:
        full = self.path(rel)
        try:
            if self.fs.exists(full):
                self.fs.rm(full, recursive=recursive)
        except Exception as exc:
            raise StorageError(f"cannot delete {self.uri(rel)}: {exc}") from exc

    # ---- folders (checkpoints) -------------------------------------------------------

    def put_dir(self, local_dir: str | Path, rel: str) -> str:
        """Upload a local folder (a model checkpoint) to `rel`. For local storage, a copy."""
        src = str(local_dir).rstrip("/")
        dst = self.path(rel)
        try:
            if self.is_local:
                import shutil

                if os.path.abspath(src) != os.path.abspath(dst):
                    shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                self.fs.put(src + "/", dst + "/", recursive=True)
        except Exception as exc:
            raise StorageError(f"cannot upload {src} to {self.uri(rel)}: {exc}") from exc
        return self.uri(rel)

    def get_dir(self, rel: str, local_dir: str | Path) -> Path:
        """Download `rel` to a local folder (or return the local path itself)."""
        if self.is_local:
            return Path(self.path(rel))
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get(self.path(rel) + "/", str(local_dir) + "/", recursive=True)
        except Exception as exc:
            raise StorageError(f"cannot download {self.uri(rel)}: {exc}") from exc
        return local_dir

    @contextmanager
    def local_dir(self, rel: str, scratch: str | Path) -> Iterator[Path]:
        """A local folder whose contents end up at `rel`: the folder itself on local storage,
        else `scratch`, uploaded when the block exits without error."""
        target = Path(self.path(rel)) if self.is_local else Path(scratch)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {target} for {self.uri(rel)}: {exc}") from exc
        yield target
        if self.is_local:
            return
        self.put_dir(scratch, rel)

    def __repr__(self) -> str:
        return f"Storage({self.uri()!r})"


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialize a table to Parquet bytes (deterministic for the same table)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def remove_stale_tmp(folder: str, max_age: float = STALE_TMP_SECONDS) -> list[str]:
    """Remove the temporary files in local `folder` whose writer died (on this host) or that
    are older than `max_age` seconds; return their names. Never raises: cleaning is a courtesy
    to the disk, not part of the write."""
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if TMP_MARK in e.name and e.is_file()]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            stale = now - entry.stat().st_mtime > max_age or _writer_is_dead(entry.name)
            if stale:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue  # another writer removed or committed it meanwhile
    return removed


@functools.cache
def host_tag() -> str:
    """This host and PID namespace (containers sharing a hostname have different ones): where
    a PID means the same process."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def _writer_tag() -> str:
    """`<host>-<pid>-<uuid>`: who writes a temporary file, so a later write can tell whether
    the writer is gone."""
    return f"{host_tag()}-{os.getpid()}-{uuid.uuid4().hex}"


def _writer_is_dead(name: str) -> bool:
    """Whether the temporary file `name` was written by a process of this host that no longer
    runs. Unknown writers (another host, an older name format) count as alive."""
    parts = name.rsplit(TMP_MARK, 1)[-1].split("-")
    if len(parts) != 3 or parts[0] != host_tag() or not parts[1].isdigit():
        return False
    return process_is_gone(int(parts[1]))


def process_is_gone(pid: int) -> bool:
    """Whether no process `pid` runs in this host's PID namespace (one owned by another user
    counts as running). A pid of 0 or below names no process (os.kill would signal a process
    group, or every process), so it is gone."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    if isinstance(proto, list | tuple):
        proto = proto[0]
    return "s3" if proto in ("s3", "s3a") else str(proto)
