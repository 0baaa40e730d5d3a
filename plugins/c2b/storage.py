"""Run artifacts on storage every worker shares: staging Parquet, extract marker, outboxes, reports.

Everything lives under one base URL, ``C2B_DATA_URL`` (:func:`data_url`), as Airflow
``ObjectStoragePath`` objects, so an extract on one worker and ``load_shards`` on another meet:

- ``file:///path`` (the default: ``file://`` + ``C2B_DATA_DIR``, which defaults to
  ``$AIRFLOW_HOME/c2b``): a local or mounted folder;
- ``s3://<conn_id>@<bucket>/<prefix>``: an S3 bucket (or any S3 API), credentials and endpoint from
  the Airflow connection ``<conn_id>`` (type ``aws``); without ``<conn_id>@``, boto's default
  credential chain. Needs ``apache-airflow-providers-amazon`` with ``s3fs``; any other fsspec
  protocol Airflow has a filesystem for works the same way.

Readers never take a partial file for a whole one: on ``file://`` a file is written under
``<name>.tmp`` and renamed when complete; on object storage it is one PUT (or one multipart
upload), which the store makes visible only when complete, and an upload that fails is aborted,
never completed. The extract marker is written after its staging file.

Every storage call goes through :func:`guard`: a failure (store unreachable, access denied...) is a
:class:`StorageError` naming the URL and the cause, which Airflow retries like any transient error;
a missing file is a :class:`StorageMissing`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

LOCAL_PROTOCOLS = ("file", "local", "")
# Upload part size on object storage: what a writer buffers (S3's smallest part is 5 MiB).
UPLOAD_PART_BYTES = 16 << 20


class StorageError(RuntimeError):
    """A storage operation failed (the message names the URL and the cause); transient: retry."""


class StorageMissing(FileNotFoundError):
    """A file a step needs is not in storage (the message says which and what to do)."""


def data_url() -> str:
    """Return the base URL of run artifacts: ``C2B_DATA_URL``, else ``file://`` + ``C2B_DATA_DIR``."""
    from c2b.settings import data_dir

    url = os.environ.get("C2B_DATA_URL", "").strip()
    if not url:
        return "file://" + str(data_dir().absolute())
    if "://" not in url:  # a plain folder
        return "file://" + str(Path(url).absolute())
    return url.rstrip("/")


def root() -> ObjectStoragePath:
    """Return the base of run artifacts as an ``ObjectStoragePath``."""
    return as_path(data_url())


def as_path(path: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    """Return ``path`` (a URL, a local path or an ``ObjectStoragePath``) as an ``ObjectStoragePath``."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(path, ObjectStoragePath):
        return path
    text = os.fspath(path)
    if "://" not in text:
        text = "file://" + str(Path(text).absolute())
    return ObjectStoragePath(text)


Location = Any  # str (a URL or a local path) | os.PathLike | ObjectStoragePath


def local_of(path: Location) -> Path | None:
    """Return the local path of ``path`` when it is one (a plain path or ``file://``), else None.

    Plain paths never go through Airflow (benchmarks and tools pass them; no import cost)."""
    if hasattr(path, "protocol"):
        return Path(path.path) if (path.protocol or "") in LOCAL_PROTOCOLS else None
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return None if "://" in text else Path(text)


def is_local(path: Location) -> bool:
    return local_of(path) is not None


@contextlib.contextmanager
def guard(action: str, path: Any) -> Iterator[None]:
    """Turn a storage failure into :class:`StorageError` (or :class:`StorageMissing`) naming ``path``."""
    try:
        yield
    except (StorageError, StorageMissing):
        raise
    except FileNotFoundError as exc:
        raise StorageMissing(f"{action} {path}: not found ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of the store, re-raised with its URL
        raise StorageError(f"{action} {path} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def exists(path: Location) -> bool:
    with guard("checking", path):
        if (local := local_of(path)) is not None:
            return local.exists()
        p = as_path(path)
        return bool(p.fs.exists(p.path))


def read_bytes(path: Location) -> bytes:
    with guard("reading", path):
        if (local := local_of(path)) is not None:
            return local.read_bytes()
        p = as_path(path)
        return p.fs.cat_file(p.path)


def read_json(path: Location) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def delete(path: Location, recursive: bool = False) -> bool:
    """Delete a file (or, ``recursive``, a folder/prefix); return whether there was one."""
    with guard("deleting", path):
        if (local := local_of(path)) is not None:
            import shutil

            if recursive and local.is_dir():
                shutil.rmtree(local, ignore_errors=True)
                return True
            try:
                local.unlink()
                return True
            except FileNotFoundError:
                return False
        p = as_path(path)
        try:
            p.fs.rm(p.path, recursive=recursive)
            return True
        except FileNotFoundError:
            return False


@contextlib.contextmanager
def atomic_sink(path: Location) -> Iterator[Any]:
    """Yield something to write ``path``'s bytes to (a local file name or an open binary file, both
    fine for pyarrow); ``path`` appears only whole, when the block ends without an exception.

    ``file://``: ``<name>.tmp`` then an atomic rename (a retry truncates a ``.tmp`` a killed writer
    left). Object storage: one upload straight to ``path``, completed when the block ends and aborted
    when it raises (a writer killed mid-upload leaves no object: the store shows uploads only when
    complete).
    """
    if (target := local_of(path)) is not None:
        tmp = target.with_name(target.name + ".tmp")
        with guard("writing", path):
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield str(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with guard("writing", path):
            os.replace(tmp, target)
        return
    p = as_path(path)
    with guard("writing", p):
        f = p.fs.open(p.path, "wb", block_size=UPLOAD_PART_BYTES)
    try:
        yield f
    except BaseException:
        discard(f)
        raise
    with guard("writing", p):
        f.close()


def discard(f: IO[bytes]) -> None:
    """Abort an upload in progress: nothing of it becomes visible (not even at garbage collection)."""
    with contextlib.suppress(Exception):
        f.discard()  # type: ignore[attr-defined]  # fsspec buffered files: abort the multipart upload
    # fsspec closes (= completes) a file that is garbage collected open; mark it closed instead.
    with contextlib.suppress(Exception):
        f.closed = True  # type: ignore[misc]


def write_bytes(path: Location, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_sink`)."""
    with atomic_sink(path) as sink, guard("writing", path):
        if isinstance(sink, str):
            with open(sink, "wb") as f:
                f.write(data)
        else:
            sink.write(data)


def write_json(path: Location, value: Any, **dumps: Any) -> None:
    write_bytes(path, json.dumps(value, default=str, **dumps).encode("utf-8"))


@contextlib.contextmanager
def arrow_source(path: Location) -> Iterator[Any]:
    """Yield what pyarrow reads ``path`` from: a local file name, or an open binary file.

    Raises :class:`StorageMissing` when there is no such file."""
    if (local := local_of(path)) is not None:
        if not local.is_file():
            raise StorageMissing(f"reading {path}: not found")
        yield str(local)
        return
    p = as_path(path)
    with guard("reading", p):
        f = p.fs.open(p.path, "rb")
    try:
        yield f
    finally:
        with contextlib.suppress(Exception):
            f.close()


def fingerprint(path: Location) -> list[Any]:
    """Return what identifies one version of a file: where it is, its size and its modification
    time (its ETag on object storage)."""
    if (local := local_of(path)) is not None:
        st = local.stat()
        return [str(local.resolve()), st.st_size, st.st_mtime_ns]
    p = as_path(path)
    with guard("reading", p):
        info = p.fs.info(p.path)
    return [str(p), info.get("size"), str(info.get("ETag") or info.get("etag") or modified(info))]


def modified(info: dict[str, Any]) -> float:
    """Return the modification time (epoch seconds) in an fsspec ``info`` record."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    return 0.0


def entries(folder: ObjectStoragePath) -> list[tuple[ObjectStoragePath, bool, float]]:
    """Return ``(path, is_folder, newest modification)`` of each entry of ``folder`` (none if absent)."""
    with guard("listing", folder):
        fs = folder.fs
        base = folder.path.rstrip("/")
        fs.invalidate_cache(base)  # another worker may have written since this process listed it
        if not fs.exists(base):
            return []
        out = []
        for info in fs.ls(base, detail=True):
            name = info["name"].rstrip("/")
            if name == base:
                continue
            child = folder / name.rsplit("/", 1)[-1]
            if info.get("type") == "directory":
                found = fs.find(name, detail=True)
                times = [modified(i) for i in found.values()]
                out.append((child, True, max(times, default=modified(info))))
            else:
                out.append((child, False, modified(info)))
        return out


class ObjectWriter:
    """Append-only records on a store without append: one object per :meth:`write`.

    Objects are ``<folder>/<prefix>-<writer>-<seq>.<suffix>`` (``writer`` unique per instance, so
    every attempt of every shard writes its own objects and none overwrites another); readers list
    the folder and read every object.
    """

    def __init__(self, folder: ObjectStoragePath, prefix: str, suffix: str) -> None:
        import uuid

        self.folder = folder
        self.prefix = prefix
        self.suffix = suffix
        self.writer = uuid.uuid4().hex[:12]
        self._seq = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> ObjectStoragePath:
        with self._lock:
            self._seq += 1
            seq = self._seq
        path = self.folder / f"{self.prefix}-{self.writer}-{seq:06d}{self.suffix}"
        write_bytes(path, data)
        return path
