"""Images are prepared once per (content, target side), held in a cache bounded in bytes, and sent at
the endpoint's own `max_image_side` when it has one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from generator.config import Endpoint, Settings, image_side
from generator.models import messages
from generator.models.messages import _BoundedLRU, cache_form, image_data_url, user_message


@pytest.fixture()
def counted(monkeypatch):
    """Fresh caches, and a log of every preparation (its target side) and every file hashed."""
    monkeypatch.setattr(messages, "_PREPARED", _BoundedLRU(10_000_000))
    monkeypatch.setattr(messages, "_CONTENT", _BoundedLRU(1000, weigh=lambda _: 1))
    log: dict[str, list] = {"prepared": [], "hashed": []}
    real_prepare, real_sha = messages._prepare, hashlib.sha256

    def prepare(data, max_side, name, as_is=False):
        log["prepared"].append(max_side)
        return real_prepare(data, max_side, name, as_is)

    class CountingHashlib:
        @staticmethod
        def sha256(data=b""):
            if len(data) > 100 and not bytes(data[:5]) == b"data:":
                log["hashed"].append(len(data))
            return real_sha(data)

    monkeypatch.setattr(messages, "_prepare", prepare)
    monkeypatch.setattr(messages, "hashlib", CountingHashlib)
    return log


def test_an_image_is_prepared_once_per_target_side(tmp_path: Path, counted):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 32), (10, 200, 30)).save(path)
    urls = {image_data_url(path, max_side=16) for _ in range(5)}
    assert counted["prepared"] == [16] and len(urls) == 1
    assert len(counted["hashed"]) == 1, "the file's content is hashed once, not per request"
    image_data_url(path, max_side=None)
    assert counted["prepared"] == [16, None]
    assert image_data_url(path, max_side=16) != image_data_url(path, max_side=None)
    assert len(counted["hashed"]) == 1


def test_the_same_picture_under_two_names_is_prepared_once_and_an_edited_file_again(tmp_path: Path, counted):
    first, copy = tmp_path / "a.png", tmp_path / "copy-of-a.png"
    Image.new("RGB", (64, 32), (10, 200, 30)).save(first)
    copy.write_bytes(first.read_bytes())
    assert image_data_url(first, max_side=16) == image_data_url(copy, max_side=16)
    assert counted["prepared"] == [16]  # keyed by content: the copy found the prepared image
    Image.new("RGB", (64, 32), (200, 10, 30)).save(first)  # edited in place: a new content hash
    os.utime(first, ns=(1, 1))
    edited = image_data_url(first, max_side=16)
    assert counted["prepared"] == [16, 16] and edited != image_data_url(copy, max_side=16)


def test_the_request_cache_key_names_the_bytes_sent_and_reuses_the_prepared_digest(tmp_path: Path, counted):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 32), (10, 200, 30)).save(path)
    message = user_message("What is this?", images=[path], max_side=16)
    url = message["content"][1]["image_url"]["url"]
    [keyed] = cache_form([message])
    digest = keyed["content"][1]["image_url"]["url"]
    assert digest == "sha256:" + hashlib.sha256(url.encode("ascii")).hexdigest()  # what a plain str gets too
    assert url.digest == digest and len(keyed["content"][1]["image_url"]["url"]) < 80


def test_the_type_sent_is_read_from_the_bytes_not_the_file_name(tmp_path: Path, counted):
    misnamed = tmp_path / "really-a-jpeg.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(misnamed, format="JPEG")
    assert image_data_url(misnamed).startswith("data:image/jpeg;base64,")


def test_the_cache_is_bounded_in_weight_and_keeps_the_recently_used():
    cache = _BoundedLRU(max_weight=100)
    cache.put(("a",), "x" * 40)
    cache.put(("b",), "y" * 40)
    assert cache.get(("a",)) is not None  # a is now the most recent
    cache.put(("c",), "z" * 40)  # 120 bytes: b, the least recent, goes
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    assert cache.weight == 80
    cache.put(("huge",), "h" * 101)  # never held: larger than the whole cache
    assert cache.get(("huge",)) is None and cache.weight == 80
    counted = _BoundedLRU(max_weight=2, weigh=lambda _: 1)
    for k in "abc":
        counted.put((k,), "sha")
    assert len(counted) == 2 and counted.get(("a",)) is None


def test_endpoint_max_image_side_overrides_the_bench_setting():
    settings = Settings()
    assert settings.bench.image_max_side == 1024
    plain = Endpoint(base_url="http://x/v1", model="m")
    assert image_side(settings, plain) == 1024
    assert image_side(settings, plain.model_copy(update={"max_image_side": 512})) == 512
    assert image_side(settings, plain.model_copy(update={"max_image_side": 0})) is None  # 0: as is
    settings.bench.image_max_side = None
    assert image_side(settings, plain) is None
