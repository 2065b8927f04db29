"""Random-weight models built from small configs, saved to a folder and loaded back through the same code a
user runs (`TextToImage.load`, `ClipScorer.load`, `SafetyChecker.load`). Nothing is downloaded.

Presets: `tiny` (tests: 32x32 images, seconds to build), `bench` (64x64 images, big enough that a CPU
benchmark measures compute and not only Python overhead), `real` (the SD-turbo / ViT-B/32 architectures
at full size with random weights, for timing on a GPU; ~1.3 B parameters for the pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A CLIP BPE tokenizer over printable ASCII plus a few merges (no download, ~200 tokens)."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>"), ("e", "r")]
    tokens = list(SPECIAL) + chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    # transformers 5 takes merges as (a, b) tuples; its annotation still says strings (DESIGN.md).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)  # type: ignore[arg-type]


_UNETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ),
    "bench": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ),
    # stabilityai/sd-turbo (SD 2.1 architecture)
    "real": dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
}
_VAES: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(8, 16), norm_num_groups=8, layers_per_block=1),
    "bench": dict(block_out_channels=(16, 32), norm_num_groups=16, layers_per_block=1),
    "real": dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, layers_per_block=2),
}
_TEXT: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    "bench": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2),
    "real": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=23,
        hidden_act="gelu",
        projection_dim=512,
    ),
}
IMAGE_SIZE = {"tiny": 32, "bench": 64, "real": 512}


def make_sd_pipeline(preset: str = "tiny", *, seed: int = 0, with_safety_checker: bool = False):
    """A StableDiffusionPipeline with random weights (in memory). `with_safety_checker` adds a tiny
    checker + feature extractor, as the real SD repos ship (the render loader must switch it off)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae_cfg = _VAES[preset]
    n_vae = len(vae_cfg["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        sample_size=IMAGE_SIZE[preset],
        **vae_cfg,
    )
    latent = IMAGE_SIZE[preset] // 2 ** (n_vae - 1)
    unet = UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, **_UNETS[preset])
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **_TEXT[preset],
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
        num_train_timesteps=1000,
    )
    checker, extractor = make_safety_checker(seed=seed) if with_safety_checker else (None, None)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=with_safety_checker,
    )


def save_sd_pipeline(folder: Path, preset: str = "tiny", *, seed: int = 0, with_safety_checker: bool = False) -> Path:
    """Build and `save_pretrained` a random-weight pipeline; load it with `TextToImage.load(folder)`."""
    folder = Path(folder)
    make_sd_pipeline(preset, seed=seed, with_safety_checker=with_safety_checker).save_pretrained(folder)
    return folder


def make_safety_checker(*, seed: int = 0, image_size: int = 32):
    """A random-weight `StableDiffusionSafetyChecker` and its `CLIPImageProcessor`."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            vocab_size=99,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    # Random concept directions (the real ones are learned); thresholds high, so nothing fires by chance.
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn_like(checker.concept_embeds))
        checker.special_care_embeds.copy_(torch.randn_like(checker.special_care_embeds))
        checker.concept_embeds_weights.fill_(0.99)
        checker.special_care_embeds_weights.fill_(0.99)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return checker, processor


def save_safety_checker(folder: Path, checker: Any = None, processor: Any = None, *, seed: int = 0) -> Path:
    """Save a (tiny) checker and its processor in one folder, as `CompVis/stable-diffusion-safety-checker` is laid out."""
    folder = Path(folder)
    if checker is None:
        checker, processor = make_safety_checker(seed=seed)
    checker.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


CLIP_PRESETS: dict[str, dict[str, int]] = {
    # heads are width // 64 in clip's build_model, so widths are multiples of 64
    "tiny": dict(
        embed_dim=32,
        image_resolution=32,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=8,
        transformer_width=64,
        transformer_layers=1,
    ),
    "bench": dict(
        embed_dim=64,
        image_resolution=64,
        vision_layers=2,
        vision_width=128,
        vision_patch_size=8,
        transformer_width=64,
        transformer_layers=2,
    ),
    "real": dict(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
        transformer_width=512,
        transformer_layers=12,
    ),  # ViT-B/32
}


def make_clip(preset: str = "tiny", *, seed: int = 0):
    """A random-weight clip-anytorch `CLIP` whose shapes `clip.model.build_model` infers back exactly."""
    import torch
    from clip.model import CLIP

    torch.manual_seed(seed)
    p = CLIP_PRESETS[preset]
    return CLIP(
        embed_dim=p["embed_dim"],
        image_resolution=p["image_resolution"],
        vision_layers=p["vision_layers"],
        vision_width=p["vision_width"],
        vision_patch_size=p["vision_patch_size"],
        context_length=77,
        vocab_size=49408,
        transformer_width=p["transformer_width"],
        transformer_heads=p["transformer_width"] // 64,
        transformer_layers=p["transformer_layers"],
    ).eval()


def save_clip(path: Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """`torch.save` a random CLIP's state dict: load it with `ClipScorer.load(path)` (= `clip.load(path)`)."""
    import torch

    path = Path(path)
    torch.save(make_clip(preset, seed=seed).state_dict(), path)
    return path
