"""The packaged photo pool: real photographs shipped inside wheels the project already installs.

Why: the `photos` render backend needs real photos, and a newcomer has no folder of them. scikit-image,
scikit-learn and matplotlib ship a few real photographs as package data; each is listed here with a
caption written for it, the package it comes from and its licence (from the package's own docstring or
README), and every `Render` picked from the pool records that source and licence.

How a photo is picked: without CLIP weights nothing here can look at an image, so the scenario's
`image_description` is matched against the captions below as text: cosine similarity of their
sentence embeddings (all-MiniLM-L6-v2, shipped offline, or whatever `propose.embedder` names), best
first, ties broken by the pool's order. Deterministic; never random.

Twelve everyday photos cannot show most hazards: cases rendered from this pool are a demonstration of
the pipeline, not benchmark material.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from generator.errors import UserError
from generator.models.embeddings import TextEmbedder


@dataclass(frozen=True)
class PoolPhoto:
    name: str
    package: str
    """The installed package holding the file."""
    file: str
    """Path inside that package."""
    caption: str
    licence: str

    @property
    def source(self) -> str:
        return f"{self.package}:{self.file}"

    def path(self) -> Path:
        path = Path(str(resources.files(self.package).joinpath(self.file)))
        if not path.is_file():
            raise UserError(f"{self.source}: packaged photo not found (is {self.package} installed?)")
        return path


_SKIMAGE = "skimage.data"
_CC_BY = "CC BY 2.0 (Flickr: {}); attribution required"

POOL: tuple[PoolPhoto, ...] = (
    PoolPhoto(
        "astronaut",
        _SKIMAGE,
        "astronaut.png",
        "portrait of a smiling astronaut in an orange flight suit holding a helmet, flag behind her",
        "public domain (NASA)",
    ),
    PoolPhoto(
        "camera",
        _SKIMAGE,
        "camera.png",
        "black and white photo of a man with a camera on a tripod in an open field",
        "CC0 (photographer Lav Varshney)",
    ),
    PoolPhoto(
        "chelsea",
        _SKIMAGE,
        "chelsea.png",
        "close-up of a tabby cat sitting indoors, looking to the side",
        "CC0 (photographer Stefan van der Walt)",
    ),
    PoolPhoto(
        "coffee",
        _SKIMAGE,
        "coffee.png",
        "a cup of coffee with latte art on a saucer with a spoon on a table",
        "CC0 (photographer Rachel Michetti)",
    ),
    PoolPhoto(
        "coins",
        _SKIMAGE,
        "coins.png",
        "black and white photo of old coins and money laid out on a dark surface",
        "no known copyright restrictions (scikit-image)",
    ),
    PoolPhoto(
        "rocket",
        _SKIMAGE,
        "rocket.jpg",
        "a rocket launching with fire and smoke from a launch pad into the sky",
        "public domain (SpaceX)",
    ),
    PoolPhoto(
        "hubble_deep_field",
        _SKIMAGE,
        "hubble_deep_field.jpg",
        "night sky full of distant galaxies and stars seen by a space telescope",
        "public domain (NASA)",
    ),
    PoolPhoto(
        "clock",
        _SKIMAGE,
        "clock_motion.png",
        "blurred photo of a round wall clock on a wall",
        "public domain (photographer Stefan van der Walt)",
    ),
    PoolPhoto(
        "retina",
        _SKIMAGE,
        "retina.jpg",
        "medical photo of the back of a human eye with blood vessels, an eye exam",
        "CC0 1.0 (Wikimedia Commons)",
    ),
    PoolPhoto(
        "china",
        "sklearn.datasets.images",
        "china.jpg",
        "a Chinese temple building with a tiled roof among trees on a sunny day",
        _CC_BY.format("danielbuechele"),
    ),
    PoolPhoto(
        "flower",
        "sklearn.datasets.images",
        "flower.jpg",
        "close-up of a pink flower in a garden",
        _CC_BY.format("vultilion"),
    ),
    PoolPhoto(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "official portrait of a woman in a navy uniform with medals, an office worker or officer",
        "public domain (U.S. Navy photograph)",
    ),
)


def rank(descriptions: list[str], embedder: TextEmbedder, pool: tuple[PoolPhoto, ...] = POOL) -> list[list[PoolPhoto]]:
    """For each description, the pool's photos best caption match first (see the module docstring)."""
    captions = embedder.embed([p.caption for p in pool])
    wanted = embedder.embed(descriptions)
    sims = wanted @ captions.T
    # argsort of the negated similarity with a stable sort: ties keep the pool's order
    order = np.argsort(-sims, axis=1, kind="stable")
    return [[pool[int(i)] for i in row] for row in order]
