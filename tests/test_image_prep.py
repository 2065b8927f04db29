"""Images are prepared once per (file, target side), held in a cache bounded in bytes, and sent at the
endpoint's own `max_image_side` when it has one."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from generator.config import Endpoint, Settings, image_side
from generator.models import messages
from generator.models.messages import _ByteBoundedCache, image_data_url


def test_an_image_is_prepared_once_per_target_side(tmp_path: Path, monkeypatch):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 32), (10, 200, 30)).save(path)
    calls: list[int | None] = []
    real = messages._data_url_for_file

    def counting(*key):
        calls.append(key[-1])
        return real(*key)

    monkeypatch.setattr(messages, "_data_url_for_file", counting)
    monkeypatch.setattr(messages, "_PREPARED", _ByteBoundedCache(10_000_000))
    urls = {image_data_url(path, max_side=16) for _ in range(5)}
    assert calls == [16] and len(urls) == 1
    image_data_url(path, max_side=None)
    assert calls == [16, None]
    assert image_data_url(path, max_side=16) != image_data_url(path, max_side=None)


def test_the_cache_is_bounded_in_bytes_and_keeps_the_recently_used():
    cache = _ByteBoundedCache(max_bytes=100)
    cache.put(("a",), "x" * 40)
    cache.put(("b",), "y" * 40)
    assert cache.get(("a",)) is not None  # a is now the most recent
    cache.put(("c",), "z" * 40)  # 120 bytes: b, the least recent, goes
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    assert cache.bytes == 80
    cache.put(("huge",), "h" * 101)  # never held: larger than the whole cache
    assert cache.get(("huge",)) is None and cache.bytes == 80


def test_endpoint_max_image_side_overrides_the_bench_setting():
    settings = Settings()
    assert settings.bench.image_max_side == 1024
    plain = Endpoint(base_url="http://x/v1", model="m")
    assert image_side(settings, plain) == 1024
    assert image_side(settings, plain.model_copy(update={"max_image_side": 512})) == 512
    assert image_side(settings, plain.model_copy(update={"max_image_side": 0})) is None  # 0: as is
    settings.bench.image_max_side = None
    assert image_side(settings, plain) is None
