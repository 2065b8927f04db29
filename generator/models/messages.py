"""Chat messages in the OpenAI format, with images as data URLs.

Why data URLs: every OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama) accepts them, and the
run folder stays the single source of the image. With a target side (`max_side`, what VLM requests use)
an image is prepared compactly: downscaled to that longest side (VLM servers resize anyway) and sent as a
JPEG at quality 90 (a 1024² photo as PNG is ~1.5 MB, as JPEG ~0.15 MB: ten times less to encode, send
and parse). A JPEG already within the side is sent unchanged. Without a side the file is sent as it is.

For the request cache an image is represented by the hash of its data URL (`cache_form`), so a key
never holds megabytes of base64.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import UserError

Message = dict[str, Any]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}


class ImageError(UserError):
    """An image for a message cannot be read; the message names the file."""


def system_message(text: str) -> Message:
    return {"role": "system", "content": text}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": text}


def user_message(text: str, images: list[Path | str | bytes] | None = None, max_side: int | None = None) -> Message:
    """A user turn: the text, then each image as an `image_url` part (data URL).

    `images`: paths to PNG/JPEG files, or PNG bytes. `max_side`: downscale so the longest side is at most
    this many pixels (None: send the file as it is).
    """
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for img in images:
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(img, max_side=max_side)}})
    return {"role": "user", "content": parts}


def image_data_url(image: Path | str | bytes, max_side: int | None = None) -> str:
    """`data:image/...;base64,...` for a file path (PNG/JPEG/WebP) or raw PNG bytes."""
    if isinstance(image, (bytes, bytearray)):
        return _encode_bytes(bytes(image), "image/png", max_side)
    path = Path(image)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image: {exc.strerror or exc}") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, max_side)
    url = _PREPARED.get(key)
    if url is None:
        url = _data_url_for_file(*key)
        _PREPARED.put(key, url)
    return url


class _ByteBoundedCache:
    """Least-recently-used prepared data URLs, bounded by their total size in bytes (not by a count:
    64 thumbnails and 64 photos differ a thousandfold). Thread-safe: images are prepared in threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        with self._lock:
            url = self._items.get(key)
            if url is not None:
                self._items.move_to_end(key)
            return url

    def put(self, key: tuple, url: str) -> None:
        with self._lock:
            if key in self._items or len(url) > self.max_bytes:
                return
            self._items[key] = url
            self.bytes += len(url)
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


_PREPARED = _ByteBoundedCache(256 * 1024 * 1024)
"""An image is prepared once per (file, mtime, size, target side) while it fits in these 256 MB."""


def _data_url_for_file(path: str, mtime_ns: int, size: int, max_side: int | None) -> str:
    p = Path(path)
    mime = _MIME.get(p.suffix.lower())
    data = p.read_bytes()
    if mime is None:
        mime = _sniff_mime(data)
        if mime is None:
            raise ImageError(f"{p}: not a PNG, JPEG, WebP or GIF image")
    return _encode_bytes(data, mime, max_side, name=str(p))


def _sniff_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    return None


def _encode_bytes(data: bytes, mime: str, max_side: int | None, name: str = "<bytes>") -> str:
    if max_side is not None:
        data, mime = _compact(data, mime, max_side, name)
    else:
        _open_image(data, name)  # sent as is, but a bomb or a broken file is refused all the same
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _open_image(data: bytes, name: str):
    """The image opened lazily (header only), refused when its pixel count is over Pillow's
    `Image.MAX_IMAGE_PIXELS` (set from `bench.image_max_pixels`): a bomb is never decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: not a readable image: {exc}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise ImageError(f"{name}: refused, {img.width}x{img.height} pixels is over the limit of {limit:,} (bench.image_max_pixels)")
    return img


JPEG_QUALITY = 90


def _compact(data: bytes, mime: str, max_side: int, name: str) -> tuple[bytes, str]:
    """Shrunk to `max_side` (aspect kept) and encoded as JPEG; a JPEG within the side is returned as is."""
    from PIL import Image

    img = _open_image(data, name)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's kinds for a truncated or broken file
        raise ImageError(f"{name}: not a readable image: {exc}") from None
    if max(img.size) <= max_side and mime == "image/jpeg":
        return data, mime
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    if img.mode in ("RGBA", "LA", "P", "PA"):  # transparency shown over white, as a viewer would
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), "image/jpeg"


@functools.lru_cache(maxsize=256)
def data_url_digest(url: str) -> str:
    """`sha256:<hex>` of a data URL's content (Python caches a str's hash, so repeats are cheap)."""
    return "sha256:" + hashlib.sha256(url.encode("ascii", "replace")).hexdigest()


def cache_form(messages: list[Message]) -> list[Message]:
    """The messages with every data URL replaced by its digest: what the request cache key is made of."""
    out: list[Message] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if url.startswith("data:"):
                        part = {**part, "image_url": {**part["image_url"], "url": data_url_digest(url)}}
                parts.append(part)
            msg = {**msg, "content": parts}
        out.append(msg)
    return out


def message_texts(messages: list[Message]) -> str:
    """All text of the messages, joined (for token estimates)."""
    chunks: list[str] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            chunks.append(content)
        elif isinstance(content, list):
            chunks.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(chunks)


def count_images(messages: list[Message]) -> int:
    n = 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return n
