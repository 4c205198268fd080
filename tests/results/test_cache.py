"""The result cache against fake-gcs-server: keyed by evaluation and digest, bounded,
atomic, and safe under concurrent requests."""

from __future__ import annotations

import threading

import pytest

from functions.results.cache import ResultCache
from functions.results.resultset import ResultSetMissing
from shared.storage import prediction_shard
from tests.results.conftest import generate, upload_result_set


def _count_downloads(storage, monkeypatch) -> list[str]:
    # Counts calls on the real client: the downloads themselves still go to the emulator.
    seen: list[str] = []
    real = storage.download_file

    def counting(name, path):
        seen.append(name)
        real(name, path)

    monkeypatch.setattr(storage, "download_file", counting)
    return seen


def test_fetches_once_and_serves_from_disk(storage, settings, tmp_path, monkeypatch):
    g = generate(tmp_path / "src", n=300)
    upload_result_set(storage, "evl_a", g.directory)
    downloads = _count_downloads(storage, monkeypatch)
    cache = ResultCache(storage, settings.cache_dir)
    with cache.open("evl_a", version="v1") as folder:
        assert sorted(p.name for p in folder.iterdir()) == [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet",
            "summary.json",
        ]
        first = folder
    assert len(downloads) == 4
    with cache.open("evl_a", version="v1") as folder:
        assert folder == first
    assert len(downloads) == 4
    # a new process finds the entry on disk: lists the bucket, downloads nothing
    with ResultCache(storage, settings.cache_dir).open("evl_a", version="v1") as folder:
        assert folder == first
    assert len(downloads) == 4


def test_a_rewritten_result_set_gets_a_new_entry(storage, settings, tmp_path):
    g = generate(tmp_path / "src", n=300)
    upload_result_set(storage, "evl_a", g.directory)
    cache = ResultCache(storage, settings.cache_dir)
    with cache.open("evl_a", version="v1") as old:
        pass
    storage.write_bytes(prediction_shard("evl_a", 3), (g.directory / "part-00000.parquet").read_bytes())
    with cache.open("evl_a", version="v2") as new:
        assert new != old and len(list(new.glob("*.parquet"))) == 4


def test_missing_result_set(storage, settings):
    with pytest.raises(ResultSetMissing):
        with ResultCache(storage, settings.cache_dir).open("evl_none", version="v1"):
            pass


def test_evicts_least_recently_used_beyond_the_bound(storage, settings, tmp_path):
    g = generate(tmp_path / "src", n=2000)
    size = sum(p.stat().st_size for p in g.directory.iterdir())
    for name in ("evl_a", "evl_b", "evl_c"):
        upload_result_set(storage, name, g.directory)
    cache = ResultCache(storage, settings.cache_dir, max_bytes=int(size * 2.5))
    with cache.open("evl_a", version="1") as a:
        pass
    with cache.open("evl_b", version="1") as b:
        pass
    with cache.open("evl_a", version="1"):  # a is now more recent than b
        pass
    with cache.open("evl_c", version="1") as c:
        assert a.is_dir() and c.is_dir() and not b.exists()
    assert len(cache.entries()) == 2


def test_entries_in_use_are_not_evicted(storage, settings, tmp_path):
    g = generate(tmp_path / "src", n=2000)
    for name in ("evl_a", "evl_b"):
        upload_result_set(storage, name, g.directory)
    cache = ResultCache(storage, settings.cache_dir, max_bytes=1)  # everything is over the bound
    with cache.open("evl_a", version="1") as a:
        with cache.open("evl_b", version="1") as b:
            assert a.is_dir() and b.is_dir()
        assert a.is_dir()
    cache.evict()
    assert cache.entries() == []


def test_concurrent_requests_download_once(storage, settings, tmp_path, monkeypatch):
    g = generate(tmp_path / "src", n=500)
    upload_result_set(storage, "evl_a", g.directory)
    downloads = _count_downloads(storage, monkeypatch)
    cache = ResultCache(storage, settings.cache_dir)
    folders, errors = [], []

    def request():
        try:
            with cache.open("evl_a", version="1") as folder:
                folders.append(folder)
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(folders)) == 1
    assert len(downloads) == 4
    assert not list((cache.root / ".partial").iterdir())


def test_the_api_cache_takes_its_bound_from_settings(storage, settings):
    from functions.results.service import cache_for

    bounded = settings.model_copy(update={"results_cache_bytes": 12345})
    assert cache_for(bounded, storage).max_bytes == 12345
