"""diffusers' `StableDiffusionSafetyChecker` as an explicit image classifier (never a silent black-out).

Loaded with `from_pretrained` from a hub id (`CompVis/stable-diffusion-safety-checker`) or a local folder:
either a checker folder (config.json + weights + preprocessor_config.json) or a pipeline folder with
`safety_checker/` and `feature_extractor/` subfolders. Images are preprocessed by the matching
`CLIPImageProcessor`.

Why the scoring is redone here instead of calling `forward`: `forward` answers only flagged / not and
blacks out flagged images; we want the margin as a score too. The rule is the checker's own: a concept
fires when its cosine minus its threshold (plus 0.01 once a special-care concept fired), rounded to three
decimals, is above zero; the image is flagged when any concept fires (tests compare with `forward`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.errors import UserError
from generator.models.clip_model import load_image

DEFAULT_SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"


class SafetyCheckerLoadError(UserError):
    """The safety checker could not be found or loaded."""


@dataclass(frozen=True)
class SafetyScore:
    flagged: bool
    score: float
    """Largest concept margin (cosine minus threshold): above 0 means flagged."""
    concepts: tuple[int, ...]
    """Indices of the concepts that fired."""


class SafetyChecker:
    def __init__(self, model: Any, processor: Any, name: str, device: str = "cpu", batch_size: int = 16):
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.batch_size = max(1, batch_size)

    @classmethod
    def load(
        cls, name_or_path: str = DEFAULT_SAFETY_CHECKER, *, device: str = "auto", batch_size: int = 16
    ) -> SafetyChecker:
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        local = Path(name_or_path).expanduser()
        pipeline_layout = local.is_dir() and (local / "safety_checker").is_dir()
        checker_sub: dict[str, Any] = {"subfolder": "safety_checker"} if pipeline_layout else {}
        processor_sub: dict[str, Any] = {"subfolder": "feature_extractor"} if pipeline_layout else {}
        source = str(local) if local.exists() else name_or_path
        try:
            model = StableDiffusionSafetyChecker.from_pretrained(source, **checker_sub)
            processor = CLIPImageProcessor.from_pretrained(source, **processor_sub)
        except Exception as exc:  # noqa: BLE001 - hub, network, file errors: one clear message
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            hint = " (HF_HUB_OFFLINE is set, so the hub was not asked)" if offline and not local.exists() else ""
            raise SafetyCheckerLoadError(
                f"could not load safety checker {name_or_path!r}{hint}: {type(exc).__name__}: {first}. "
                "Download it once (e.g. `huggingface-cli download CompVis/stable-diffusion-safety-checker "
                "--local-dir models/safety-checker`) and set `check.safety_checker` to that folder"
            ) from None
        model.to(device).eval()  # type: ignore[arg-type]  # transformers types `.to` as a decorator
        return cls(model, processor, name_or_path, device, batch_size)

    def score(self, images: Sequence[Any]) -> list[SafetyScore]:
        """Verdicts for images (paths or PIL images), `batch_size` per forward pass."""
        import torch

        out: list[SafetyScore] = []
        m = self.model
        for start in range(0, len(images), self.batch_size):
            pil = [load_image(im) for im in images[start : start + self.batch_size]]
            pixels = self.processor(images=pil, return_tensors="pt").pixel_values.to(self.device, m.dtype)
            with torch.no_grad():
                embeds = m.visual_projection(m.vision_model(pixels)[1])
                embeds = torch.nn.functional.normalize(embeds.float(), dim=-1)
                special = embeds @ torch.nn.functional.normalize(m.special_care_embeds.float(), dim=-1).T
                concept = embeds @ torch.nn.functional.normalize(m.concept_embeds.float(), dim=-1).T
                special_margin = (special - m.special_care_embeds_weights.float()).cpu()
                concept_cos = (concept - m.concept_embeds_weights.float()).cpu()
            for i in range(len(pil)):
                adjustment = 0.01 if bool((special_margin[i].round(decimals=3) > 0).any()) else 0.0
                margins = (concept_cos[i] + adjustment).round(decimals=3)
                fired = tuple(int(j) for j in torch.nonzero(margins > 0).flatten())
                out.append(SafetyScore(flagged=bool(fired), score=float(margins.max()), concepts=fired))
        return out
