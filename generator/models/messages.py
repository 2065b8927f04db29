"""Chat messages in the OpenAI format, with images as data URLs.

Why data URLs: every OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama) accepts them, and the
run folder stays the single source of the image. With a target side (`max_side`, what VLM requests use)
an image is prepared compactly: downscaled to that longest side (VLM servers resize anyway) and sent as a
JPEG at quality 90 (a 1024² photo as PNG is ~1.5 MB, as JPEG ~0.15 MB: ten times less to encode, send
and parse). A JPEG already within the side is sent unchanged. Without a side the file is sent as it is.
`as_is` (protocol `siuo`, whose published evaluation sends each file's own bytes): the file's bytes unless
it is over the side (then downscaled) or in a format servers do not take (then re-encoded). Every prepared
image says how it was sent (`DataURL.sent_as`: "original", "downscaled WxH", "re-encoded WxH"), so a
Response can record it.

An image is prepared once per (content, target side): a file's content hash is computed once per
(path, size, mtime) and keys a cache of prepared data URLs bounded in bytes, so the same picture under
two names (a split and its copy) is prepared once, and an edited file is prepared again. For the request
cache an image is represented by the hash of its data URL (`cache_form`), so a key never holds megabytes
of base64 and names exactly the bytes the model was sent; that hash too is computed once, when the image
is prepared (`DataURL.digest`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

from generator.errors import UserError

Message = dict[str, Any]


class ImageError(UserError):
    """An image for a message cannot be read; the message names the file."""


def system_message(text: str) -> Message:
    return {"role": "system", "content": text}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": text}


def user_message(
    text: str, images: list[Path | str | bytes] | None = None, max_side: int | None = None, as_is: bool = False
) -> Message:
    """A user turn: the text, then each image as an `image_url` part (data URL).

    `images`: paths to PNG/JPEG files, or PNG bytes. `max_side`: downscale so the longest side is at most
    this many pixels (None: send the file as it is). `as_is`: keep the file's own bytes whenever it is
    within `max_side` (no JPEG re-encoding).
    """
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for img in images:
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(img, max_side=max_side, as_is=as_is)}})
    return {"role": "user", "content": parts}


def images_sent_as(message: Message) -> str | None:
    """How the message's images were sent ("original", "downscaled 1024x768", ...; several joined by
    "; "), or None when it carries none: what a Response records."""
    content = message.get("content")
    if not isinstance(content, list):
        return None
    notes = [
        getattr((p.get("image_url") or {}).get("url"), "sent_as", None) or "unknown"
        for p in content
        if isinstance(p, dict) and p.get("type") == "image_url"
    ]
    return "; ".join(notes) or None


def image_data_url(image: Path | str | bytes, max_side: int | None = None, as_is: bool = False) -> DataURL:
    """`data:image/...;base64,...` for a file path (PNG/JPEG/WebP/GIF) or raw image bytes."""
    if isinstance(image, (bytes, bytearray)):
        return _prepare(bytes(image), max_side, "<bytes>", as_is)
    path = Path(image)
    try:
        stat = path.stat()
        stamp = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        data = None
        content = _CONTENT.get(stamp)
        if content is None:
            data = path.read_bytes()
            content = hashlib.sha256(data).hexdigest()
            _CONTENT.put(stamp, content)
        url = _PREPARED.get((content, max_side, as_is))
        if url is None:
            url = _prepare(data if data is not None else path.read_bytes(), max_side, str(path), as_is)
            _PREPARED.put((content, max_side, as_is), url)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image: {exc.strerror or exc}") from None
    return url


class DataURL(str):
    """A prepared image's data URL, carrying `digest`: the sha256 of the URL, computed once when the
    image is prepared, so a request cache key never hashes the same megabyte twice; and `sent_as`, how the
    image was sent ("original", "downscaled WxH", "re-encoded WxH")."""

    digest: str
    sent_as: str

    def __new__(cls, url: str, sent_as: str = "original") -> DataURL:
        self = super().__new__(cls, url)
        self.digest = _sha256_of(url)
        self.sent_as = sent_as
        return self


class _BoundedLRU:
    """Least-recently-used entries bounded by their total weight (`weigh(value)`): prepared data URLs
    by their size in bytes (64 thumbnails and 64 photos differ a thousandfold), content hashes by count.
    Thread-safe: images are prepared in threads."""

    def __init__(self, max_weight: int, weigh=len):
        self.max_weight = max_weight
        self.weight = 0
        self._weigh = weigh
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        weight = self._weigh(value)
        with self._lock:
            if key in self._items or weight > self.max_weight:
                return
            self._items[key] = value
            self.weight += weight
            while self.weight > self.max_weight:
                _, old = self._items.popitem(last=False)
                self.weight -= self._weigh(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.weight = 0


_PREPARED = _BoundedLRU(256 * 1024 * 1024)
"""Prepared data URLs by (content hash, target side, as_is), while they fit in these 256 MB."""

_CONTENT = _BoundedLRU(100_000, weigh=lambda _: 1)
"""Content hashes by (path, mtime, size): a file is hashed once (100k entries: about 20 MB at most)."""


def _prepare(data: bytes, max_side: int | None, name: str, as_is: bool = False) -> DataURL:
    """The data URL for an image's bytes. The type is read from the bytes, never from a file's name, so
    the result depends only on (content, target side, as_is), which is what the caches are keyed by."""
    mime = _sniff_mime(data)
    if as_is:
        img = _open_image(data, name)  # header only: a bomb or a broken file is refused all the same
        if mime is not None and (max_side is None or max(img.size) <= max_side):
            return DataURL(f"data:{mime};base64," + base64.b64encode(data).decode("ascii"), "original")
        # over the side, or a format servers do not take (BMP, TIFF): the least change that can be sent
        max_side = max_side if max_side is not None and max(img.size) > max_side else max(img.size)
    if max_side is not None:
        sent, mime, size, scaled = _compact(data, mime, max_side, name)  # any format Pillow reads becomes a JPEG
        if sent is data:
            sent_as = "original"
        else:
            sent_as = f"{'downscaled' if scaled else 're-encoded'} {size[0]}x{size[1]}"
        return DataURL(f"data:{mime};base64," + base64.b64encode(sent).decode("ascii"), sent_as)
    _open_image(data, name)  # sent as is, but a bomb or a broken file is refused all the same
    if mime is None:
        raise ImageError(f"{name}: not a PNG, JPEG, WebP or GIF image")
    return DataURL(f"data:{mime};base64," + base64.b64encode(data).decode("ascii"), "original")


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
        raise ImageError(
            f"{name}: refused, {img.width}x{img.height} pixels is over the limit of {limit:,} (bench.image_max_pixels)"
        )
    return img


JPEG_QUALITY = 90


def _compact(data: bytes, mime: str | None, max_side: int, name: str) -> tuple[bytes, str, tuple[int, int], bool]:
    """Shrunk to `max_side` (aspect kept) and encoded as JPEG; a JPEG within the side is returned as is.
    Also returns the size sent and whether it was downscaled."""
    from PIL import Image

    img = _open_image(data, name)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's kinds for a truncated or broken file
        raise ImageError(f"{name}: not a readable image: {exc}") from None
    if max(img.size) <= max_side and mime == "image/jpeg":
        return data, mime, img.size, False
    scaled = max(img.size) > max_side
    if scaled:
        scale = max_side / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS
        )
    if img.mode in ("RGBA", "LA", "P", "PA"):  # transparency shown over white, as a viewer would
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), "image/jpeg", img.size, scaled


def data_url_digest(url: str) -> str:
    """`sha256:<hex>` of a data URL's content: the one computed when it was prepared, if it was."""
    digest = getattr(url, "digest", None)
    return digest if digest is not None else _sha256_of(url)


def _sha256_of(url: str) -> str:
    """The one digest formula of a data URL (a prepared one and a plain str must key alike)."""
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


def tiny_png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid solid-colour PNG made with the standard library only (the endpoint probe sends one; tests use it)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
