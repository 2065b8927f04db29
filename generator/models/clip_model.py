"""CLIP through clip-anytorch (`import clip`): image/text embeddings, cosine similarity, zero-shot screens.

A model is named (`ViT-B/32`, `ViT-L/14`: `clip.load` downloads it once into ~/.cache/clip) or given as a
local checkpoint file (a state dict saved with `torch.save`, or an original OpenAI `.pt` file). clip's
`build_model` infers the architecture from the state dict's shapes and casts weights to fp16 (back to fp32
on cpu), so a fp32 checkpoint round-trips with ~1e-2 differences in the embeddings.

Why batches: a CLIP forward pass over 16 images costs little more than over one, so images are encoded
`batch_size` at a time (see bench/bench_clip.py for the figures).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from generator.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_CLIP = "ViT-B/32"


class ClipLoadError(UserError):
    """A CLIP model could not be found or loaded; the message says how to point at a local file."""


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "SIUO_OFFLINE"))


def load_image(image: Any):
    """A PIL RGB image from a path or a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


class ClipScorer:
    """A loaded CLIP model with its preprocessing; every output is an L2-normalised fp32 CPU tensor."""

    def __init__(self, model: Any, preprocess: Any, name: str, device: str, batch_size: int = 16):
        self.model = model
        self.preprocess = preprocess
        self.name = name
        self.device = device
        self.batch_size = max(1, batch_size)
        self._text_cache: dict[str, Any] = {}

    @classmethod
    def load(
        cls,
        name_or_path: str = DEFAULT_CLIP,
        *,
        device: str = "auto",
        batch_size: int = 16,
        download_root: str | None = None,
    ) -> ClipScorer:
        import clip
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        path = Path(name_or_path).expanduser()
        if path.is_file():
            source = str(path)
        elif name_or_path in clip.available_models():
            source = name_or_path
            root = Path(download_root or os.path.expanduser("~/.cache/clip"))
            cached = root / os.path.basename(clip.clip._MODELS[name_or_path])
            if _offline() and not cached.is_file():
                raise ClipLoadError(
                    f"CLIP model {name_or_path!r} is not in {root} and HF_HUB_OFFLINE is set, so it was not "
                    "downloaded; point `check.clip_model` at a local checkpoint file instead"
                )
        else:
            raise ClipLoadError(
                f"CLIP model {name_or_path!r} is neither a file nor a known name "
                f"({', '.join(clip.available_models())}); set `check.clip_model` to one of those or to a "
                "local checkpoint file"
            )
        try:
            model, preprocess = clip.load(source, device=device, jit=False, download_root=download_root)
        except Exception as exc:  # noqa: BLE001 - download, unpickling, shape errors: one clear message
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ClipLoadError(
                f"could not load CLIP model {name_or_path!r} ({type(exc).__name__}: {first}); set "
                "`check.clip_model` to a local checkpoint file (a state dict saved with torch.save)"
            ) from None
        model.eval()
        return cls(model, preprocess, name_or_path, device, batch_size)

    @property
    def input_resolution(self) -> int:
        return int(self.model.visual.input_resolution)

    # -- encoders -----------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Any], batch_size: int | None = None):
        """Embeddings of images (paths or PIL images), `batch_size` images per forward pass: (N, D)."""
        import torch

        bs = batch_size or self.batch_size
        out = []
        with torch.no_grad():
            for start in range(0, len(images), bs):
                pixels = torch.stack([self.preprocess(load_image(im)) for im in images[start : start + bs]])
                feats = self.model.encode_image(pixels.to(self.device)).float()
                out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
        if not out:
            return torch.zeros((0, self.embed_dim))
        return torch.cat(out)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256):
        """Embeddings of texts (truncated to CLIP's 77 tokens): (N, D). Repeated texts are encoded once."""
        import clip
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        with torch.no_grad():
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                tokens = clip.tokenize(chunk, truncate=True).to(self.device)
                feats = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()
                self._text_cache.update(zip(chunk, feats))
        if not texts:
            return torch.zeros((0, self.embed_dim))
        return torch.stack([self._text_cache[t] for t in texts])

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    # -- scores -------------------------------------------------------------------------------------

    @staticmethod
    def cosine(image_emb, text_emb):
        """All pairs: (N images, M texts) cosine similarities."""
        return image_emb @ text_emb.T

    def zero_shot(self, image_emb, labels: Sequence[str]):
        """Probabilities over `labels` per image (softmax of CLIP's scaled logits): (N, len(labels))."""
        text_emb = self.encode_texts(list(labels))
        scale = float(self.model.logit_scale.exp().item())
        return (scale * self.cosine(image_emb, text_emb)).softmax(dim=-1)
