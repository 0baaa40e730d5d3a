"""A disk cache of validated plans, so an unchanged plan file skips YAML and validation on re-parse.

The dag-processor re-parses every plan file every 30 s (``[dag_processor] min_file_process_interval``)
and a worker re-parses a plan's file before each task; almost always nothing changed. A cache entry
holds the validated :class:`~c2b.plan.model.Plan` and is used only when all of these are unchanged:

- the plan file's text;
- every segment file the validation read (the audience's and each excluded segment's), compared by
  the SHA-256 of the exact bytes validation parsed;
- the validating code: the sources of the modules that validate a plan, the versions of the
  libraries they rely on (pydantic, Jinja, PyYAML, croniter) and Python's version (``code_salt``),
  and the segment folder (``C2B_SQL_DIR``).

Only a plan that passed every check and was built into a DAG is stored; a broken plan is validated
(and reported) on every parse, so its errors never come from the cache. The DAG itself is rebuilt
every time (from the cached plan).

Where: ``$C2B_PLAN_CACHE`` if set (``off`` disables the cache), else ``$C2B_DATA_DIR/plan_cache``
(by default ``$AIRFLOW_HOME/c2b/plan_cache``): one small file per plan file, replaced when that plan
changes. It is safe to delete at any time (``python -m c2b cache clear``). The cache degrades to
"no cache" when the folder cannot be created or written (a read-only deploy) and ignores a folder
that is group- or world-writable or owned by another user, because entries are pickles.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from c2b.plan.model import Plan

FORMAT = 1  # bump when the entry layout changes
OFF_VALUES = ("off", "0", "false", "no", "")
# The modules whose code decides whether a plan is valid and what the validated plan holds.
_VALIDATING_MODULES = (
    "plan/model", "plan/errors", "plan/load", "plan/checks", "plan/templates", "audience/sql", "settings",
    "hashing", "plan/cache",
)
# tzdata: plans name timezones (checked against the zone database); Python's zoneinfo reads the
# system database first, whose changes this cannot see (`python -m c2b cache clear` after one).
_LIBRARIES = ("pydantic", "pydantic_core", "jinja2", "yaml", "croniter", "tzdata")


def cache_dir() -> Path | None:
    """Return the plan cache folder, or None when the cache is turned off."""
    from c2b.settings import data_dir

    raw = os.environ.get("C2B_PLAN_CACHE")
    if raw is not None and raw.strip().lower() in OFF_VALUES:
        return None
    return Path(raw) if raw else data_dir() / "plan_cache"


@lru_cache(maxsize=1)
def code_salt() -> bytes:
    """Return a digest of everything besides the files that decides a plan's validation."""
    from importlib import metadata

    h = hashlib.sha256(f"c2b-plan-cache {FORMAT} {sys.version}\n".encode())
    here = Path(__file__).parents[1]
    for name in _VALIDATING_MODULES:
        h.update(name.encode() + b"\0" + (here / f"{name}.py").read_bytes() + b"\0")
    for lib in _LIBRARIES:
        try:
            version = metadata.version({"yaml": "PyYAML", "pydantic_core": "pydantic-core"}.get(lib, lib))
        except metadata.PackageNotFoundError:
            version = "?"
        h.update(f"{lib}={version}\n".encode())
    return h.digest()


def text_key(text: str) -> str:
    """Return the cache key of a plan file's text (under the current code and segment folder)."""
    from c2b.settings import sql_dir

    return hashlib.sha256(code_salt() + os.fsencode(sql_dir()) + b"\0" + text.encode("utf-8")).hexdigest()


def digest(data: bytes) -> str:
    """Return the digest a segment file's bytes are compared by."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """What one cache file holds."""

    format: int
    path: str
    key: str
    segments: tuple[tuple[str, str], ...]  # (segment file path, digest of the bytes validation read)
    plan: Plan


class PlanCache:
    """Validated plans on disk, one file per plan file (see the module doc)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writable: bool | None = None

    def _entry_file(self, path: Path) -> Path:
        name = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:40]
        return self.folder / f"{name}.pickle"

    def _trusted(self) -> bool:
        """Whether entries may be unpickled: our own folder, writable by nobody else."""
        try:
            st = os.stat(self.folder)
        except OSError:
            return False
        mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        return mine and stat.S_ISDIR(st.st_mode) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

    def get(self, path: Path, key: str) -> Plan | None:
        """Return the cached plan of ``path`` when its text (``key``) and segment files are unchanged."""
        try:
            raw = self._entry_file(path).read_bytes()
        except OSError:
            return None
        if not self._trusted():
            return None
        try:
            entry = pickle.loads(raw)
        except Exception:  # noqa: BLE001 - a truncated or foreign file: a miss, rewritten on success
            return None
        if (not isinstance(entry, Entry) or entry.format != FORMAT or entry.key != key
                or entry.path != os.path.abspath(path)):
            return None
        for seg_path, seg_digest in entry.segments:
            try:
                with open(seg_path, "rb") as f:
                    if digest(f.read()) != seg_digest:
                        return None
            except OSError:
                return None
        return entry.plan

    def put(self, path: Path, key: str, plan: Plan, segments: dict[str, str]) -> bool:
        """Store a plan that passed every check; return whether it was written (never raises)."""
        if self._writable is False:
            return False
        entry = Entry(FORMAT, os.path.abspath(path), key, tuple(sorted(segments.items())), plan)
        target = self._entry_file(path)
        tmp = None
        try:
            data = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
            if self._writable is None:
                self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._writable = True
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".pickle")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            return True
        except Exception as exc:  # noqa: BLE001 - read-only deploy, full disk, unpicklable value: no cache
            if isinstance(exc, OSError):
                self._writable = False  # stop trying in this process
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            return False

    def clear(self) -> int:
        """Delete every entry; return how many were deleted."""
        n = 0
        if not self.folder.is_dir():
            return 0
        for p in self.folder.glob("*.pickle"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        for p in self.folder.glob(".tmp-*"):
            try:
                p.unlink()
            except OSError:
                pass
        return n


_caches: dict[Path, PlanCache] = {}


def get_cache() -> PlanCache | None:
    """Return the process's plan cache for the configured folder, or None when it is off."""
    folder = cache_dir()
    if folder is None:
        return None
    cache = _caches.get(folder)
    if cache is None:
        cache = _caches[folder] = PlanCache(folder)
    return cache


def load_cached_plan(path: Path) -> tuple[Plan, Any]:
    """Return ``(plan, store)`` for the plan file at ``path``, fully validated unless cached.

    ``store()`` records a freshly validated plan in the cache; call it only once the plan is known
    good (its DAG built). Raises :class:`~c2b.plan.model.PlanError` exactly as ``load_plan`` does.
    """
    from c2b.plan.load import load_plan

    def nothing() -> None:
        return None

    cache = get_cache()
    if cache is None:
        return load_plan(path, check_name=True), nothing
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return load_plan(path, check_name=True), nothing  # reports the error as it always does
    key = text_key(text)
    plan = cache.get(path, key)
    if plan is not None:
        return plan, nothing
    segments: dict[str, str] = {}
    plan = load_plan(path, check_name=True, text=text, segments_used=segments)

    def store() -> None:
        cache.put(path, key, plan, segments)

    return plan, store
