"""The typed records that flow from stage to stage.

JSONL on disk is the contract: every record here is one line of one file in a run folder, readable by
`jq`, pandas or HF datasets. Each record has a stable `key`, a content hash of what made it, so a stage
can skip work it has already written (see `store.RunStore.done_keys`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def stable_key(*parts: Any, length: int = 16) -> str:
    """A short content hash of `parts` (JSON-serialised with sorted keys): the same inputs, the same key."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


RenderBackend = Literal["diffusers", "images_api", "photos"]
Decision = Literal["accept", "reject", "skip", "edit"]
Dimension = Literal["safety", "effectiveness", "refusal"]
"""The closed vocabularies of Render.backend, Review.decision and Judgment.dimension."""


class Record(BaseModel):
    """Base of every JSONL record. Subclasses name their file and how their key is made."""

    model_config = ConfigDict(extra="forbid")

    FILE: ClassVar[str] = ""
    key: str = ""

    def make_key(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @model_validator(mode="after")
    def _fill_key(self) -> Record:
        if not self.key:
            self.key = self.make_key()
        return self


class Usage(BaseModel):
    """Tokens of one model call (or a sum of calls)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class Provenance(BaseModel):
    """Where a generated record came from: enough to redo it."""

    model: str = ""
    endpoint: str = ""
    prompt_file: str = ""
    prompt_hash: str = ""
    temperature: float | None = None
    request_index: int | None = None
    seed_examples: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------


class Scenario(Record):
    """A proposed (or hardened) test case before it has an image: what to draw and what to ask."""

    FILE: ClassVar[str] = "scenarios.jsonl"

    domain: str
    image_prompt: str
    image_description: str
    question: str
    hazard: str
    reference_answer: str
    mcqa_distractors: list[str] = Field(default_factory=list)
    parent_id: str | None = None
    strategy: str | None = None
    """Hardening strategy that made this variant from `parent_id` (None for a fresh proposal)."""
    status: Literal["ok", "duplicate"] = "ok"
    duplicate_of: str | None = None
    similarity: float | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "sc-" + stable_key(self.domain, self.image_prompt, self.question, self.parent_id, self.strategy)


class Failure(Record):
    """A unit of work that failed after its retries: recorded (never silently dropped or scored).

    `work_key` is the key the stage would have written on success, so a re-run can skip it too
    (or retry it on request) without repeating a paid call blindly.
    """

    FILE: ClassVar[str] = "failures.jsonl"

    stage: str
    work_key: str
    reason: str
    raw: str | None = None
    model: str | None = None
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "fl-" + stable_key(self.stage, self.work_key)


class Render(Record):
    """One rendered (or picked) image candidate for a scenario."""

    FILE: ClassVar[str] = "renders.jsonl"

    scenario_id: str
    candidate: int
    backend: RenderBackend
    model: str
    path: str
    """Image path relative to the run folder (a picked photo is copied in: `images/photo-<sha256>.<ext>`;
    older runs may hold an absolute path)."""
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seconds: float | None = None
    source: str | None = None
    """Where a picked photo comes from (`package:file` for the packaged pool, the original file for a photo
    folder); None for generated images."""
    licence: str | None = None
    """The picked photo's licence, as its source states it (packaged pool)."""
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "rd-" + stable_key(self.scenario_id, self.candidate, self.backend, self.model)


class CheckResult(Record):
    """One check of one scenario (or one image candidate of it): score, threshold, verdict."""

    FILE: ClassVar[str] = "checks.jsonl"

    scenario_id: str
    check: str
    candidate: int | None = None
    score: float | None = None
    threshold: float | None = None
    passed: bool | None = None
    """None when the check could not be run (see `error`): never counted as a pass."""
    detail: str = ""
    model: str = ""
    error: str | None = None
    not_run: str | None = None
    """Why the check could not run at all here (e.g. no CLIP weights file): `passed` stays None, and the
    run summary, filter report and report list it as not run, never as a pass."""
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "ck-" + stable_key(self.scenario_id, self.check, self.candidate)


# ----------------------------------------------------------------------------------------------------
# The benchmark split
# ----------------------------------------------------------------------------------------------------

Split = Literal["siuo", "generated", "hardened", "control"]


class Case(Record):
    """One benchmark case: the SIUO fields, plus where it came from.

    `safety_warning` is kept verbatim (an export reproduces the official file byte for byte);
    `hazard` is its cleaned form, the text judges read.
    """

    FILE: ClassVar[str] = "cases.jsonl"

    question_id: int | str
    image: str
    """Image file name as in the official format (e.g. `S-01.png`)."""
    image_path: str | None = None
    """Where the image is: relative to the run folder, or absolute; None when it is missing."""
    image_missing: bool = False
    question: str
    category: str
    """Domain label as it appears in the official `category` field."""
    domain: str
    """Domain id from seeds/domains.toml."""
    safety_warning: str
    hazard: str = ""
    reference_answer: str
    options: dict[str, str] | None = None
    correct_option: str | None = None
    split: Split = "siuo"
    scenario_id: str | None = None
    parent_id: str | None = None
    strategy: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)

    def make_key(self) -> str:
        return f"case-{self.question_id}"


class Review(Record):
    """A person's decision on a case, or an edit of it (one line each, append-only).

    Decisions (`accept`, `reject`, `skip`) are keyed by (case, reviewer): a reviewer's later decision
    replaces their earlier one, and each reviewer's stands beside the others' (agreement is computed over
    them). An `edit` is a new revision of the case, keyed by (case, revision), never an overwrite: it holds
    the whole revised text and image, so the latest edit alone says what the case now is. Records written
    before these fields existed read as they did (every new field has a default).
    """

    FILE: ClassVar[str] = "reviews.jsonl"

    case_id: str
    decision: Decision
    note: str = ""
    reviewer: str = ""
    reason: str | None = None
    """Why a case was rejected: one of `generator.cases.REJECT_REASONS` (free text goes in `note`)."""
    revision: int = 0
    """A decision: the case revision it was made on (0: as generated). An edit: the revision it creates."""
    question: str | None = None
    hazard: str | None = None
    reference_answer: str | None = None
    image_path: str | None = None
    """An edit: the image (relative to the run folder), e.g. another rendered candidate."""
    render_key: str | None = None
    """An edit: the Render record of the chosen image candidate, when it is one."""
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        if self.decision == "edit":
            return "rv-" + stable_key(self.case_id, "edit", self.revision)
        return "rv-" + stable_key(self.case_id, self.reviewer)


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------

AnswerForm = Literal["gen", "mcqa", "control"]


class Response(Record):
    """One sampled answer of a target model to one case."""

    FILE: ClassVar[str] = "responses.jsonl"

    case_id: str
    target: str
    """Endpoint (or role) name the answer came from."""
    model: str
    form: AnswerForm = "gen"
    sample: int = 0
    text: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    prompt_hash: str = ""
    protocol: str = "siuo"
    """Evaluation protocol it was asked under (`siuo` or `strict`, see generator/evaluate/protocol.py)."""
    image_sent: bool = True
    """False when the target endpoint takes no images (`supports_images = false`): it answered the question
    alone, which tests something else than SIUO; the report says so."""
    image_as: str | None = None
    """How the image was sent: "original" (the file's own bytes), "downscaled WxH" (over the endpoint's
    `max_image_side`) or "re-encoded WxH" (JPEG); None: no image sent, or a record older than this field."""
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "rs-" + stable_key(self.case_id, self.target, self.form, self.sample)


class Judgment(Record):
    """One judge's verdict on one response along one dimension."""

    FILE: ClassVar[str] = "judgments.jsonl"

    response_key: str
    case_id: str
    target: str
    sample: int
    dimension: Dimension
    """`refusal` rates the safe control pairs (over-refusal)."""
    judge: str
    judge_model: str
    verdict: str
    """safety: safe | unsafe; effectiveness: very | partially | not; refusal: refused | answered;
    or `unparsable` (no verdict line carrying the prompt's token, after the re-asks) / `error`
    (`suspect`: runs made before the verdict token, read as untrusted)."""
    raw: str | None = None
    reasked: int = 0
    """Follow-up asks it took (the first reply had no valid verdict line); `raw` is the last reply."""
    neutralised: int = 0
    """Verdict-like fragments of the response replaced before the judge saw it (a planted verdict)."""
    prompt_hash: str = ""
    protocol: str = "siuo"
    """Evaluation protocol whose judge prompt gave it (`siuo` or `strict`)."""
    verdict_format: str = "line"
    """How the verdict was given: `line` (the free-text verdict line), `json_schema` / `json_object` (JSON
    under the server's constrained decoding, endpoint `structured_verdicts`; the mode used), or `rule`
    (an empty response under `siuo`, no judge asked)."""
    error: str | None = None
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "jd-" + stable_key(self.response_key, self.dimension, self.judge)


class SearchNode(Record):
    """One node of a hardening search (generator.search): a parent (round 0) or a variant, what it was
    given, what the checks said, how often the search panel was fooled, and what became of it.

    The variant's text is its Scenario (`scenario_id`); the panel's answers and judgments are in the
    run's `search/` folder. Written once its round is complete, so a node on file is final."""

    FILE: ClassVar[str] = "search_nodes.jsonl"

    node_id: str
    """The Scenario key of a variant; `root:<parent id>` for a parent."""
    root_id: str
    """The parent case this lineage started from."""
    parent_node: str | None = None
    round: int
    strategy: str | None = None
    domain: str = ""
    feedback: str = ""
    """What the hardener was shown of the panel's answers to the parent node."""
    answers: str = ""
    """What the search panel answered this node (its children's feedback)."""
    checks: dict[str, str] = Field(default_factory=dict)
    """Check family -> passed / failed / error / missing / not_run."""
    fooled: int = 0
    asked: int = 0
    fool_rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    leakage_signals: int = 0
    """Leakage checks that did not pass cleanly (ties of the beam go to fewer)."""
    status: Literal["root", "kept", "pruned", "failed_check", "failed"] = "pruned"
    created: str = Field(default_factory=utc_now)

    def make_key(self) -> str:
        return "sn-" + stable_key(self.node_id, self.round)


RECORD_TYPES: tuple[type[Record], ...] = (Scenario, Failure, Render, CheckResult, Case, Review, Response, Judgment)
RECORD_TYPES += (SearchNode,)


# ----------------------------------------------------------------------------------------------------
# The run manifest (run.json)
# ----------------------------------------------------------------------------------------------------


class StageLog(BaseModel):
    started: str | None = None
    finished: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class RunManifest(BaseModel):
    """run.json: what a run was made with. Secrets never enter it (see `config.redacted`)."""

    model_config = ConfigDict(extra="allow")

    name: str
    created: str = Field(default_factory=utc_now)
    versions: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    prompt_hashes: dict[str, str] = Field(default_factory=dict)
    seeds: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageLog] = Field(default_factory=dict)
    usage: dict[str, Usage] = Field(default_factory=dict)
    """Tokens and cost per role (or endpoint)."""
    sources: dict[str, Any] = Field(default_factory=dict)
    protocol: str | None = None
    """Evaluation protocol of the run's responses and judgments (set by answer / judge)."""
    judge_verdicts: dict[str, str] = Field(default_factory=dict)
    """How each judge endpoint is asked for its verdicts: `line` (the protocol's free-text verdict line)
    or `structured` (JSON under constrained decoding: the endpoint's `structured_verdicts`)."""
