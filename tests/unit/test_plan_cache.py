"""The plan cache: an unchanged plan skips validation; anything that could change the verdict misses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from c2b.plan import cache as plan_cache
from c2b.plan import load as plan_module
from c2b.plan.cache import load_cached_plan
from c2b.plan.errors import PlanError
from c2b.plan.load import load_plan
from c2b.settings import PROJECT_ROOT

from devtools.plan_samples import base_plan, mutate


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private segment library and cache folder; returns the plans folder."""
    sql = tmp_path / "sql"
    shutil.copytree(PROJECT_ROOT / "include" / "sql", sql)
    monkeypatch.setenv("C2B_SQL_DIR", str(sql))
    monkeypatch.setenv("C2B_PLAN_CACHE", str(tmp_path / "cache"))
    plans = tmp_path / "plans"
    plans.mkdir()
    return plans


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every full validation (YAML + checks) the cache lets through."""
    calls: list[Path] = []
    real = plan_module.load_plan

    def counting(path, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(plan_module, "load_plan", counting)
    return calls


def write(plans: Path, data: dict, name: str = "sample_plan") -> Path:
    path = plans / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(path: Path):  # type: ignore[no-untyped-def]
    """Load as the factory does: store only after success."""
    plan, store = load_cached_plan(path)
    store()
    return plan


def entries(env: Path) -> list[Path]:
    folder = env.parent / "cache"
    return sorted(folder.glob("*.pickle")) if folder.is_dir() else []


def test_an_unchanged_plan_is_validated_once(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    first = load(path)
    second = load(path)
    assert second == first == load_plan(path, check_name=True)
    assert len(validations) == 1
    assert len(entries(env)) == 1


def test_a_changed_plan_is_validated_again(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load(path)
    write(env, mutate(base_plan(), "delivery.shards", 8))
    assert load(path).delivery.shards == 8
    assert len(validations) == 2
    assert len(entries(env)) == 1  # one entry per plan file, replaced


def test_a_broken_plan_is_never_cached(env: Path, validations: list[Path]) -> None:
    path = write(env, mutate(base_plan(), "delivery.shards", 3))
    for _ in range(2):
        with pytest.raises(PlanError, match="delivery.shards: must be a power of two"):
            load(path)
    assert len(validations) == 2
    assert entries(env) == []


def test_a_plan_is_not_cached_until_stored(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load_cached_plan(path)  # e.g. Airflow then rejected the DAG: the factory does not store
    load_cached_plan(path)
    assert len(validations) == 2
    assert entries(env) == []


def _segment(env: Path, name: str) -> Path:
    return env.parent / "sql" / "segments" / name


def test_a_changed_segment_file_invalidates(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load(path)
    segment = _segment(env, "cancelled_for_reason.sql")
    sql = segment.read_text()
    # Same size and a restored mtime: only the content says it changed.
    changed = sql.replace("price_too_low", "price_too_LOW", 1)
    assert len(changed) == len(sql) and changed != sql
    st = segment.stat()
    segment.write_text(changed)
    os.utime(segment, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(PlanError, match=r"audience\.params\.reason: 'price_too_low' is not allowed"):
        load(path)
    assert len(validations) == 2
    segment.write_text(sql)  # the exact bytes the cached plan was validated against
    assert load(path) == load_plan(path, check_name=True)
    assert len(validations) == 2


def test_a_changed_excluded_segment_invalidates(env: Path, validations: list[Path]) -> None:
    data = mutate(base_plan(), "audience.exclude", [{"segment": "nps_detractors.sql",
                                                     "params": {"max_score": 6, "days": 30}}])
    path = write(env, data)
    load(path)
    load(path)
    assert len(validations) == 1
    segment = _segment(env, "nps_detractors.sql")
    segment.write_text(segment.read_text().replace("max_score (integer", "max_points (integer"))
    with pytest.raises(PlanError, match=r"audience\.exclude\[0\]"):
        load(path)
    assert len(validations) == 2


def test_a_removed_segment_file_invalidates(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load(path)
    _segment(env, "cancelled_for_reason.sql").unlink()
    with pytest.raises(PlanError, match="no segment file include/sql/segments/cancelled_for_reason.sql"):
        load(path)


def test_another_segment_folder_invalidates(env: Path, validations: list[Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(env, base_plan())
    load(path)
    other = env.parent / "sql2"
    shutil.copytree(env.parent / "sql", other)
    monkeypatch.setenv("C2B_SQL_DIR", str(other))
    load(path)
    assert len(validations) == 2


def test_changed_validating_code_invalidates(env: Path, validations: list[Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(env, base_plan())
    load(path)
    monkeypatch.setattr(plan_cache, "code_salt", lambda: b"other code")
    load(path)
    assert len(validations) == 2


def test_the_salt_covers_the_validating_modules() -> None:
    for name in plan_cache._VALIDATING_MODULES:
        assert (Path(plan_cache.__file__).parents[1] / f"{name}.py").is_file()
    assert {"plan/model", "plan/checks", "plan/templates"} <= set(plan_cache._VALIDATING_MODULES)


def test_a_renamed_file_is_validated_again(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load(path)
    moved = path.rename(env / "other_name.yaml")
    with pytest.raises(PlanError, match="id: must equal the file name"):
        load(moved)


def test_off_means_no_cache(env: Path, validations: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C2B_PLAN_CACHE", "off")
    path = write(env, base_plan())
    load(path)
    load(path)
    assert len(validations) == 2
    assert entries(env) == []


def test_an_unwritable_folder_degrades_to_no_cache(env: Path, validations: list[Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = env.parent / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("C2B_PLAN_CACHE", str(blocker / "cache"))  # mkdir fails (also as root)
    path = write(env, base_plan())
    assert load(path) == load(path)
    assert len(validations) == 2


def test_a_folder_others_may_write_is_not_trusted(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load(path)
    (env.parent / "cache").chmod(0o777)
    load(path)
    assert len(validations) == 2


def test_a_corrupt_entry_is_a_miss(env: Path, validations: list[Path]) -> None:
    path = write(env, base_plan())
    load(path)
    [entry] = entries(env)
    entry.write_bytes(b"garbage")
    assert load(path) == load_plan(path, check_name=True)
    assert len(validations) == 2
    load(path)  # rewritten by the miss
    assert len(validations) == 2


def test_clear(env: Path) -> None:
    load(write(env, base_plan()))
    cache = plan_cache.get_cache()
    assert cache is not None and cache.clear() == 1
    assert entries(env) == []


def test_cli(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from c2b.cli import main

    load(write(env, base_plan()))
    assert main(["cache"]) == 0
    assert "1 cached plan(s)" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 cached plan(s)" in capsys.readouterr().out
    assert entries(env) == []
