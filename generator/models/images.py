"""Images API client (`/v1/images/generations`): the `images_api` render backend's only way out.

Why raise here when chat returns errors as data: a render stage calls this once per scenario and
records a Failure from the exception; there is no partial image to keep.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from generator.models.endpoint import EndpointClient
from generator.models.resilience import MalformedReply, ModelError, RequestFailed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _as_png(data: bytes) -> bytes:
    if data.startswith(PNG_MAGIC):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()
    except (UnidentifiedImageError, OSError) as exc:
        raise ModelError(f"the images endpoint returned data that is not an image: {exc}") from None


class ImagesClient(EndpointClient):
    """Text-to-image on one endpoint; images come back as PNG bytes (b64_json on the wire)."""

    async def generate(self, prompt: str, n: int = 1, size: str = "512x512", **params: Any) -> list[bytes]:
        """`n` PNG images for `prompt`. Extra params (quality, style, seed, ...) go into the request;
        `response_format=None` leaves the field out (for servers that always answer b64_json)."""
        body: dict[str, Any] = {"response_format": "b64_json", **params}
        body = {k: v for k, v in body.items() if v is not None}
        client = self._rt.client

        async def post() -> Any:
            request = {**body, "model": self.model, "prompt": prompt, "n": n, "size": size}
            text = await client.post("/images/generations", body=request, cast_to=str)
            try:
                return json.loads(text)
            except RecursionError:  # a hostile body: retried as malformed, never a crash
                raise MalformedReply("the images reply is JSON nested too deeply to read") from None

        try:
            payload = await self._rt.call(post)
        except RequestFailed as failed:
            raise ModelError(f"endpoint {self.name!r}: image generation failed: {failed.message}") from None
        self._hub.meter.requests[self.usage_key] = self._hub.meter.requests.get(self.usage_key, 0) + 1
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            raise ModelError(f"endpoint {self.name!r}: the images reply has no data")
        out = []
        for item in items:
            b64 = item.get("b64_json") if isinstance(item, dict) else None
            if not b64:
                raise ModelError(f"endpoint {self.name!r}: an image came back without b64_json (URLs are not fetched)")
            try:
                out.append(_as_png(base64.b64decode(b64, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise ModelError(f"endpoint {self.name!r}: bad base64 image data: {exc}") from None
        return out
