"""Text-to-image with diffusers: one loader for a hub id or a local folder, batched and seeded generation.

Models that work through `AutoPipelineForText2Image` (pass any of them as `--model` or `render.model`):

- `stabilityai/sd-turbo` (default): 512x512, 1 step, guidance 0. Small (~2.5 GB in fp16) and fast.
- `stabilityai/sdxl-turbo`: 512x512, 1-4 steps, guidance 0; better images, ~7 GB.
- `black-forest-labs/FLUX.1-schnell`: 1024x1024, 4 steps, guidance 0; best images, ~33 GB in bf16
  (use `render.cpu_offload = true` on a 24 GB card). Runs in bf16: fp16 overflows in FLUX.
- `Efficient-Large-Model/Sana_600M_512px_diffusers` (SANA): fast at high resolution; bf16.
- any local folder written by `pipeline.save_pretrained(folder)` (what the tests use).

Why the pipeline's own safety checker is switched off: the Stable Diffusion checker silently replaces a
flagged image with a black one, which would hide the very images the check stage must see and reject.
The check stage runs safety checks explicitly (CLIP screen, `StableDiffusionSafetyChecker`, guards) and
records each verdict, so nothing is blacked out and nothing is dropped without a record.

Why one CPU `torch.Generator` per image: the initial noise of image i depends only on its own seed, not on
the batch it was rendered in nor on the GPU, so every image can be re-made from its `Render` record alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/sd-turbo"

# Pipelines whose activations overflow in fp16: run them in bf16 on a GPU.
_BF16_PIPELINES = ("Flux", "Sana", "StableDiffusion3", "PixArt", "Lumina", "CogView", "HiDream", "QwenImage")


class ModelLoadError(UserError):
    """A diffusion model could not be found or loaded; the message says how to point at a local folder."""


def resolve_device(device: str = "auto") -> str:
    """`auto` means cuda if present, else mps if present, else cpu."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str, pipeline_class: str = ""):
    """`auto`: fp32 on cpu; on a GPU fp16, or bf16 for pipelines that overflow in fp16 (FLUX, SANA, SD3)."""
    import torch

    names = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if dtype != "auto":
        try:
            return names[dtype]
        except KeyError:
            raise UserError(f"render.dtype: unknown dtype {dtype!r} (use auto, float16, bfloat16 or float32)") from None
    if device.startswith("cpu"):
        return torch.float32
    if any(pipeline_class.startswith(p) for p in _BF16_PIPELINES):
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    return torch.float16


def _dtype_kwarg() -> str:
    """diffusers >= 0.42 takes `dtype=` (and warns on `torch_dtype=`); older versions only `torch_dtype=`."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _load_error(model: str, exc: BaseException) -> ModelLoadError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    where = (
        "it is not a local folder and HF_HUB_OFFLINE is set, so the hub was not asked"
        if offline and not Path(model).exists()
        else "the hub id or folder could not be loaded"
    )
    return ModelLoadError(
        f"could not load diffusion model {model!r}: {where} ({type(exc).__name__}: {first}). "
        "Download it once (e.g. `huggingface-cli download stabilityai/sd-turbo --local-dir models/sd-turbo`) "
        "and point at the folder with `--model /path/to/folder` or `render.model` in the config"
    )


@dataclass
class TextToImage:
    """A loaded text-to-image pipeline and what it runs on."""

    pipe: Any
    model: str
    device: str
    dtype: Any

    @classmethod
    def load(
        cls, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto", cpu_offload: bool = False
    ) -> TextToImage:
        """Load a hub id or a local folder (the same `from_pretrained` path for both), safety checker off."""
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        if Path(model).expanduser().exists():
            model = str(Path(model).expanduser())
            if not (Path(model) / "model_index.json").is_file():
                raise ModelLoadError(
                    f"{model}: not a diffusers pipeline folder (no model_index.json); save one with "
                    "`pipeline.save_pretrained(folder)` or download a hub model into it"
                )
        try:
            config = DiffusionPipeline.load_config(model)
        except Exception as exc:  # noqa: BLE001 - hub, network, or file errors: all one clear message
            raise _load_error(model, exc) from None
        pipeline_class = str(config.get("_class_name", ""))
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device, pipeline_class)
        kwargs: dict[str, Any] = {_dtype_kwarg(): torch_dtype}
        if "safety_checker" in config:
            # See the module docstring: the check stage runs safety checks explicitly.
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(model, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _load_error(model, exc) from None
        if cpu_offload and device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        log.info("loaded %s (%s) on %s as %s", model, pipeline_class, device, torch_dtype)
        return cls(pipe=pipe, model=model, device=device, dtype=torch_dtype)

    @property
    def has_safety_checker(self) -> bool:
        return getattr(self.pipe, "safety_checker", None) is not None

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int = 1,
        guidance_scale: float = 0.0,
        width: int = 512,
        height: int = 512,
    ) -> list:
        """One pipeline call for the whole batch; image i is made from `seeds[i]` alone (PIL images)."""
        import torch

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                width=width,
                height=height,
                generator=generators,
                output_type="pil",
            )
        return list(out.images)
