"""Images for cases: diffusers pipelines, an images API, or real photos from the photo pool."""

from generator.render.stage import render

__all__ = ["render"]
