"""The two CLIP checks. They share one loaded model and one embedding per image (`ClipEmbedder`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from generator.checks.base import CheckNotRun, LocalImageCheck, Outcome
from generator.errors import UserError
from generator.resources import data_file


def read_concepts(path_str: str) -> list[str]:
    """Concept lines of a file (`#` comments and blank lines skipped); a relative path not found here may be
    one of the toolkit's own (the default `prompts/unsafe_concepts.txt`)."""
    p = Path(path_str).expanduser()
    if not p.is_absolute() and not p.exists():
        p = data_file(path_str)
    if not p.is_file():
        raise UserError(f"{path_str}: concept list not found")
    lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    concepts = list(dict.fromkeys(ln for ln in lines if ln))
    if not concepts:
        raise UserError(f"{p}: concept list is empty")
    return concepts


class ClipEmbedder:
    """A CLIP model loaded on first use, and each image embedded once (`batch` images per forward pass)."""

    def __init__(self, name_or_path: str, batch: int):
        self.name, self.batch = name_or_path, batch
        self._scorer: Any = None
        self._image_emb: dict[str, Any] = {}

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    def __getstate__(self) -> dict:
        """Pickled without the model and the embeddings (a Ray actor loads and embeds its own)."""
        return {**self.__dict__, "_scorer": None, "_image_emb": {}}

    @property
    def scorer(self):
        if self._scorer is None:
            from generator.models.clip_model import ClipLoadError, ClipScorer

            try:
                self._scorer = ClipScorer.load(self.name, batch_size=self.batch)
            except ClipLoadError as exc:
                raise CheckNotRun(f"no CLIP weights: {exc}") from None
        return self._scorer

    def images(self, paths: Sequence[Path]) -> list[Any]:
        """Embeddings of images; an unreadable image gives its exception instead."""
        from generator.models.clip_model import load_image

        todo = [p for p in dict.fromkeys(paths) if str(p) not in self._image_emb]
        bs = self.scorer.batch_size
        for start in range(0, len(todo), bs):
            loaded, ok = [], []
            for p in todo[start : start + bs]:
                try:
                    loaded.append(load_image(p))
                    ok.append(p)
                except Exception as exc:  # noqa: BLE001 - recorded as the check's error
                    self._image_emb[str(p)] = exc
            if loaded:
                for p, e in zip(ok, self.scorer.encode_images(loaded, batch_size=len(loaded))):
                    self._image_emb[str(p)] = e
        return [self._image_emb[str(p)] for p in paths]

    def texts(self, texts: Sequence[str]):
        return self.scorer.encode_texts(list(texts))


class AlignmentCheck(LocalImageCheck):
    """Does the image show what was meant: CLIP cosine(image, image_description) >= threshold."""

    name: ClassVar[str] = "alignment"
    uses_text: ClassVar[bool] = True

    def __init__(self, embedder: ClipEmbedder, threshold: float):
        self.clip, self.threshold, self.model = embedder, threshold, embedder.name

    def load(self) -> None:
        _ = self.clip.scorer  # the property loads the model

    def score_images(self, paths, texts=None):
        assert texts is not None and len(texts) == len(paths)
        embs = self.clip.images(paths)
        text_embs = self.clip.texts(texts)
        out: list[Outcome | Exception] = []
        for i, emb in enumerate(embs):
            if isinstance(emb, Exception):
                out.append(emb)
                continue
            score = float(emb @ text_embs[i])
            out.append(Outcome(score, score >= self.threshold, "CLIP cosine(image, image_description)"))
        return out


class ConceptScreenCheck(LocalImageCheck):
    """CLIP zero-shot screen: best unsafe concept minus best safe concept must not exceed the margin."""

    name: ClassVar[str] = "image_benign.clip"

    def __init__(self, embedder: ClipEmbedder, margin: float, unsafe_file: str, safe_file: str):
        self.clip, self.threshold, self.model = embedder, margin, embedder.name
        self.unsafe_file, self.safe_file = unsafe_file, safe_file
        self._concepts: Any = None

    def load(self) -> None:
        _ = self.clip.scorer  # the property loads the model
        if self._concepts is None:
            unsafe, safe = read_concepts(self.unsafe_file), read_concepts(self.safe_file)
            self._concepts = (unsafe, safe, self.clip.texts(unsafe), self.clip.texts(safe))

    def score_images(self, paths, texts=None):
        self.load()
        unsafe, safe, unsafe_emb, safe_emb = self._concepts
        out: list[Outcome | Exception] = []
        for emb in self.clip.images(paths):
            if isinstance(emb, Exception):
                out.append(emb)
                continue
            cu, cs = emb @ unsafe_emb.T, emb @ safe_emb.T
            iu, is_ = int(cu.argmax()), int(cs.argmax())
            score = float(cu[iu] - cs[is_])
            out.append(
                Outcome(
                    score,
                    score <= self.threshold,
                    f"closest unsafe: {unsafe[iu]!r} ({float(cu[iu]):.3f}); "
                    f"closest safe: {safe[is_]!r} ({float(cs[is_]):.3f})",
                )
            )
        return out
