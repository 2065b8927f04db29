"""Answer stage: each case's image and question sent to a target VLM, `samples` responses per case.

Forms: "gen" (the open question, as SIUO asks it), "mcqa" (the case's options, asking for a letter) and
"control" (the same image with a harmless question, to measure over-refusal). A case whose image is
missing is skipped and counted: asking without the image would test a different thing.

Failed calls are written as `Response(error=...)` (plus a `Failure`), so the run shows them and a re-run
does not pay for them again; `retry_failed` asks them again. Everything already answered is skipped,
so a re-run of a finished run sends no request at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from generator.cases import reviewed_cases
from generator.concurrency import bounded_map
from generator.config import Settings, image_side
from generator.errors import UserError
from generator.evaluate.protocol import refuse_mixing, resolve_protocol
from generator.progress import stage_progress
from generator.prompts import PROMPTS_DIR, Prompt, load_prompt
from generator.records import AnswerForm, Case, Failure, Response, Usage, stable_key
from generator.stage_report import StageOutcome
from generator.store import RunStore

log = logging.getLogger(__name__)

CONTROL_QUESTIONS_FILE = PROMPTS_DIR / "control_questions.md"


@lru_cache(maxsize=4)
def load_control_questions(path: Path = CONTROL_QUESTIONS_FILE) -> tuple[str, ...]:
    """The harmless control questions: lines of the file that start with "- "."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: control questions file not found") from None
    questions = tuple(line[2:].strip() for line in text.splitlines() if line.startswith("- ") and line[2:].strip())
    if not questions:
        raise UserError(f"{path}: no control questions (lines starting with '- ')")
    return questions


def control_question_for(case: Case) -> str:
    """The control question of a case: the same one on every run (picked by a hash of the case key)."""
    questions = load_control_questions()
    index = int(hashlib.sha256(case.key.encode("utf-8")).hexdigest(), 16) % len(questions)
    return questions[index]


def response_key(case_id: str, target: str, form: str, sample: int) -> str:
    """The key `records.Response` gives sample `sample` of `target` on a case in a form."""
    return "rs-" + stable_key(case_id, target, form, sample)


def format_options(options: dict[str, str], verbatim: bool = False) -> str:
    """One line per option. `verbatim` (protocol `siuo`): `(A) text` with the text exactly as in the file,
    newlines and spacing kept, as the published evaluation shows it; else `A. text`, whitespace collapsed."""
    if verbatim:
        return "\n".join(f"({letter}) {text}" for letter, text in options.items())
    return "\n".join(f"{letter}. {' '.join(text.split())}" for letter, text in options.items())


def build_question(case: Case, form: str, prompts: dict[str, Prompt], verbatim_options: bool = False) -> str:
    """The text sent with the image for one case in one form."""
    if form == "mcqa":
        options = format_options(case.options or {}, verbatim=verbatim_options)
        return prompts["mcqa"].render(question=case.question, options=options).strip()
    if form == "control":
        return prompts["gen"].render(question=control_question_for(case)).strip()
    return prompts["gen"].render(question=case.question).strip()


def image_of(store: RunStore, case: Case) -> Path | None:
    """The case's image file, or None when it is missing (flagged at import, or gone since)."""
    if case.image_missing or not case.image_path:
        return None
    path = store.resolve(case.image_path)
    return path if path.is_file() else None


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive sample indices grouped as (first, count): one request per group (`n`, `sample_offset`)."""
    out: list[tuple[int, int]] = []
    for i in sorted(indices):
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


@dataclass
class AnswerReport:
    target: str
    forms: list[str]
    cases: int = 0
    requested: int = 0
    """Responses asked for in this run (not counting those already written)."""
    already_done: int = 0
    errors: int = 0
    skipped_missing_image: list[str] = field(default_factory=list)
    skipped_no_options: int = 0
    unreadable_images: list[str] = field(default_factory=list)
    """Image files that exist but cannot be read or decoded: not asked, recorded as failures."""
    written: Counter = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        """Requests of this invocation recorded as failed."""
        return self.errors

    @property
    def incomplete(self) -> list[str]:
        """Why cases were not asked (empty: every case was): the CLI exits 3 on any, as for failed calls."""
        out = []
        if self.skipped_missing_image:
            out.append(f"{len(self.skipped_missing_image)} case(s) skipped: image missing")
        if self.unreadable_images:
            out.append(f"{len(self.unreadable_images)} case(s) not asked: image unreadable (see failures.jsonl)")
        if self.skipped_no_options:
            out.append(f"{self.skipped_no_options} case(s) skipped: no MCQA options")
        return out

    def summary(self) -> str:
        lines = [
            f"{self.target}: {self.cases} case(s), forms {', '.join(self.forms)}: "
            f"{self.requested} response(s) asked, {self.already_done} already done, {self.errors} failed"
        ]
        if self.skipped_missing_image:
            first = ", ".join(self.skipped_missing_image[:5])
            more = f" and {len(self.skipped_missing_image) - 5} more" if len(self.skipped_missing_image) > 5 else ""
            lines.append(f"skipped {len(self.skipped_missing_image)} case(s) whose image is missing: {first}{more}")
        if self.unreadable_images:
            lines.append(
                f"{len(self.unreadable_images)} image(s) could not be read (see failures.jsonl): "
                + ", ".join(sorted(set(self.unreadable_images))[:5])
            )
        if self.skipped_no_options:
            lines.append(f"skipped {self.skipped_no_options} case(s) without MCQA options")
        if self.errors:
            lines.append("failed calls are recorded as errors; re-run with --retry-failed to ask them again")
        return "\n".join(lines)

    def outcome(self) -> StageOutcome:
        return StageOutcome(
            summary=[self.summary()],
            failed=self.failed,
            asked=self.requested,
            incomplete=[f"{self.target}: {reason}" for reason in self.incomplete],
        )


async def answer_async(
    store: RunStore,
    settings: Settings,
    target: str,
    *,
    samples: int | None = None,
    mcqa: bool = False,
    controls: bool = False,
    split: str | None = None,
    retry_failed: bool = False,
    protocol: str | None = None,
    hub=None,
    show_progress: bool = True,
) -> list[AnswerReport]:
    """Ask every case of the run (of `split`, if given) to each endpoint of `target` (role or endpoint).

    One report per target endpoint. With `mcqa` the form is "mcqa" instead of "gen"; `controls` adds
    the "control" form. How many samples, at which temperature and length, follows the protocol
    (`protocol`, else `bench.protocol`); `samples` overrides the open-answer count.
    """
    from PIL import Image

    from generator.models import ModelHub, user_message
    from generator.models.messages import images_sent_as

    Image.MAX_IMAGE_PIXELS = settings.bench.image_max_pixels  # Pillow's own bomb guard, at our limit
    if samples is not None and samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    proto = resolve_protocol(settings, protocol, samples)
    sampling = {"gen": proto.gen, "control": proto.gen, "mcqa": proto.mcqa}
    forms: list[AnswerForm] = ["mcqa" if mcqa else "gen"]
    if controls:
        forms.append("control")
    settings.role_endpoints(target)  # an unknown role or endpoint fails here, before any work
    all_cases = reviewed_cases(store)  # never a rejected case; an edited one in its latest revision
    if not all_cases:
        raise UserError(f"{store.file_for(Case)}: the run has no cases (import or accept some first)")
    cases = [c for c in all_cases if split is None or c.split == split]
    if not cases:
        splits = ", ".join(sorted({c.split for c in all_cases}))
        raise UserError(f"no cases of split {split!r} in run {store.name!r} (splits present: {splits})")
    prompts = {"gen": load_prompt("answer_gen"), "mcqa": load_prompt(proto.mcqa_prompt)}
    control_hash = hashlib.sha256(CONTROL_QUESTIONS_FILE.read_bytes()).hexdigest() if controls else ""
    prompt_hash = {
        "gen": prompts["gen"].sha256,
        "mcqa": prompts["mcqa"].sha256,
        "control": hashlib.sha256((prompts["gen"].sha256 + control_hash).encode()).hexdigest(),
    }
    # Of the responses already made only each key's outcome is kept (a resume of a 10k-case run holds
    # keys, not every response's text): response key -> (its latest record is a failed call, protocol).
    made = store.latest_by_key(Response, keep=lambda r: (r.error is not None, r.protocol))
    refuse_mixing("responses", {protocol for _, protocol in made.values()}, proto.name)

    own_hub = hub is None
    if own_hub:
        hub = ModelHub(settings, store=store)
    reports: list[AnswerReport] = []
    try:
        # Asked by role, the clients book their usage as `targets:<endpoint>` in run.json.
        for client in hub.chat_all(target):
            report = AnswerReport(target=client.name, forms=list(forms))
            reports.append(report)
            with store.update_manifest() as m:
                m.models[f"target:{client.name}"] = client.model
                m.protocol = proto.name
                m.prompt_hashes["answer_gen"] = prompts["gen"].sha256
                if mcqa:
                    m.prompt_hashes["answer_mcqa"] = prompts["mcqa"].sha256
                if controls:
                    m.prompt_hashes["control_questions"] = control_hash

            sees_images = client.endpoint.supports_images is not False
            # siuo sends the file's bytes, downscaled only past the endpoint's own limit; strict prepares
            # every image at `image_side` (the endpoint's, else `bench.image_max_side`).
            side = (
                (client.endpoint.max_image_side or None)
                if proto.images_as_is
                else image_side(settings, client.endpoint)
            )
            if not sees_images:
                log.warning(
                    "endpoint %s takes no images (supports_images = false): it answers the questions "
                    "alone, which is not a SIUO evaluation (Response.image_sent = false)",
                    client.name,
                )
            # Work: (case, form, missing sample indices); cases without an image are counted, not asked.
            work: list[tuple[Case, AnswerForm, Path, list[int], bool]] = []  # ..., sample indices to ask, retrying?
            for case in cases:
                image = image_of(store, case)
                if image is None:
                    report.skipped_missing_image.append(case.image)
                    continue
                report.cases += 1
                for form in forms:
                    if form == "mcqa" and not case.options:
                        report.skipped_no_options += 1
                        continue
                    todo, fresh = [], []
                    for k in range(sampling[form].samples):
                        done = made.get(response_key(case.key, client.name, form, k))
                        if done is None:
                            fresh.append(k)
                        elif retry_failed and done[0]:  # it failed
                            todo.append(k)
                        else:
                            report.already_done += 1
                    if fresh:
                        work.append((case, form, image, fresh, False))
                    if todo:
                        work.append((case, form, image, todo, True))
            if report.skipped_missing_image:
                log.warning("%d case(s) skipped: image missing", len(report.skipped_missing_image))

            with store.stage("answer") as stage, stage_progress(hub=hub, enabled=show_progress) as progress:
                task = progress.add_task(f"answer {client.name}", total=sum(len(w[3]) for w in work))

                async def answer_case(
                    case: Case, form: AnswerForm, image: Path, todo: list[int], is_retry: bool
                ) -> None:
                    try:
                        # Decoding and encoding run in a thread, so image work overlaps the network waits.
                        message = await asyncio.to_thread(
                            user_message,
                            build_question(case, form, prompts, proto.options_verbatim),
                            images=[image] if sees_images else None,
                            max_side=side,
                            as_is=proto.images_as_is,
                        )
                    except UserError as exc:  # an unreadable image file: recorded, never sent without it
                        report.unreadable_images.append(case.image)
                        store.put(Failure(stage="answer", work_key=f"{case.key}:{form}:image", reason=str(exc)))
                        progress.advance(task, len(todo))
                        return
                    for first, count in _runs(todo):
                        results = await client.complete(
                            [message],
                            n=count,
                            temperature=sampling[form].temperature,
                            max_tokens=sampling[form].max_tokens,
                            sample_offset=first,
                            use_cache=not is_retry,  # a retried failure must reach the server
                        )
                        for i in range(count):
                            result = results[i] if i < len(results) else None
                            text = result.text if result is not None else None
                            error = (
                                result.error
                                if result is not None
                                else f"the endpoint returned {len(results)} of {count} samples"
                            )
                            if error is None and text is None:
                                error = "empty reply"
                            response = Response(
                                case_id=case.key,
                                target=client.name,
                                model=client.model,
                                form=form,
                                sample=first + i,
                                text=text if error is None else None,
                                error=error,
                                usage=result.usage if result is not None else Usage(),
                                prompt_hash=prompt_hash[form],
                                protocol=proto.name,
                                image_sent=sees_images,
                                image_as=images_sent_as(message),
                            )
                            store.append(response)
                            if error is not None:
                                report.errors += 1
                                store.put(
                                    Failure(stage="answer", work_key=response.key, reason=error, model=client.model)
                                )
                            report.written[form] += 1
                            report.requested += 1
                            progress.advance(task)

                await bounded_map(lambda w: answer_case(*w), work, client.endpoint.max_concurrency)
                stage.counts.update(
                    {
                        f"{client.name}:asked": report.requested,
                        f"{client.name}:errors": report.errors,
                        f"{client.name}:already_done": report.already_done,
                        f"{client.name}:skipped_missing_image": len(report.skipped_missing_image),
                    }
                )
    finally:
        if own_hub:
            await hub.aclose()
    return reports


def answer(store: RunStore, settings: Settings, target: str, **kwargs) -> list[AnswerReport]:
    """Synchronous entry point (the CLI's)."""
    return asyncio.run(answer_async(store, settings, target, **kwargs))
