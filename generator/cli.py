"""The `siuo` command line: one small function per verb, wiring only; the work lives in the stages."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from generator.errors import UserError
from generator.stage_report import StageOutcome, StageReport
from generator.terminal import PrintableLogs, printable

app = typer.Typer(
    help="Grow cross-modal safety benchmarks of the SIUO kind: propose, render, check, review, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
summary_out = Console()
"""Stage summaries (what happened: N new, M already done) go to stdout, for a script to read; progress and
warnings stay on stderr."""

RunOpt = typer.Option(..., "--run", help="Run folder name under outputs/ (or $SIUO_OUTPUTS).")
ConfigOpt = typer.Option(None, "--config", "-c", help="Config TOML (default: $SIUO_CONFIG or ./siuo.toml).")
WaitOpt = typer.Option(
    False, "--wait", help="If another siuo process is writing to this run, wait for it instead of stopping."
)
ExecutorOpt = typer.Option(
    None, "--executor", help="Where render and the model-local checks run: local or ray (default: [executor] kind)."
)
ProtocolOpt = typer.Option(
    None, "--protocol", help="Evaluation protocol: siuo (published) or strict (default: bench.protocol, siuo)."
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[_scrubbing(RichHandler(console=console, show_path=False))],
    )


def _scrubbing(handler: logging.Handler) -> logging.Handler:
    """`handler` with every known key and key-shaped string masked (debug logs print response headers),
    then control characters shown escaped (an endpoint's error text may carry `ESC c`, a terminal reset)."""
    from generator.models import ScrubSecrets

    handler.addFilter(ScrubSecrets())
    handler.addFilter(PrintableLogs())
    return handler


EXIT_FAILED_RECORDS = 3
"""Exit code of a command that finished but failed or skipped part of its work (failed requests, cases
skipped for a missing or unreadable image, answers left out of an import, `siuo run` stopped early)."""


def comma_list(text: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]: the comma-separated names an option takes (strategies, judges)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def exit_if_failed(
    failed: int, asked: int, what: str = "request(s)", retry: str = "--retry-failed", skipped: list[str] | None = None
) -> None:
    """End a command that recorded failures or skipped work with last lines saying so and exit code 3, so
    a script never mistakes a server outage (or a half-done stage) for a finished one. `skipped`: one
    reason per kind of work left undone."""
    for reason in skipped or []:
        console.print(f"[bold yellow]incomplete:[/] {printable(reason)}", highlight=False, soft_wrap=True)
    if failed:
        console.print(
            f"[bold yellow]{failed} of {asked} {what} failed[/] (recorded in failures.jsonl); "
            f"fix the cause and re-run with {retry}",
            highlight=False,
            soft_wrap=True,
        )
    if failed or skipped:
        raise typer.Exit(EXIT_FAILED_RECORDS)


def finish(*reports: StageReport) -> None:
    """End a stage's verb the one way every verb ends: its summary and tables on stdout, then (stderr) what
    was left undone and what failed, and exit code 3 when either is non-empty."""
    outcomes = [r.outcome() for r in reports]
    for o in outcomes:
        for line in o.summary:
            summary_out.print(printable(line), highlight=False, soft_wrap=True)
        for table in o.tables:
            summary_out.print(table)
    first = outcomes[0] if outcomes else StageOutcome(summary=[])
    exit_if_failed(
        sum(o.failed for o in outcomes),
        sum(o.asked for o in outcomes),
        what=first.what,
        retry=first.retry,
        skipped=[reason for o in outcomes for reason in o.incomplete],
    )


def clean_errors(fn: Callable) -> Callable:
    """Turn the project's own errors (bad input, bad config) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            console.print(f"[bold red]error:[/] {printable(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# ----------------------------------------------------------------------------------------------------
# Official SIUO format
# ----------------------------------------------------------------------------------------------------


@app.command("import-siuo")
@clean_errors
def import_siuo_cmd(
    gen: Path | None = typer.Option(None, "--gen", help="Official siuo_gen.json."),
    mcqa: Path | None = typer.Option(None, "--mcqa", help="Official siuo_mcqa.json (adds options)."),
    images: Path | None = typer.Option(None, "--images", help="Folder holding the official images."),
    hub: str | None = typer.Option(
        None,
        "--hub",
        metavar="REPO",
        help="Fetch the official files from this Hugging Face dataset (owner/name, or a local folder laid out "
        "like it): question files and images archive, cached and resumable; HF_TOKEN if gated.",
    ),
    revision: str | None = typer.Option(None, "--revision", help="With --hub: a branch, tag or commit."),
    hub_cache: Path | None = typer.Option(None, "--hub-cache", help="With --hub: cache folder (default: the hub's)."),
    run: str = RunOpt,
    strict: bool = typer.Option(False, "--strict", help="Missing images are an error, not a flag."),
    wait: bool = WaitOpt,
) -> None:
    """Import the official SIUO files as Case records of a run (local files, or --hub REPO)."""
    from generator.interop.siuo import read_official, write_import
    from generator.store import RunStore

    if (hub is None) == (gen is None):
        raise UserError("import-siuo: give either --gen FILE (with --mcqa / --images) or --hub REPO")
    if hub is not None:
        if mcqa is not None or images is not None:
            raise UserError("import-siuo: --mcqa and --images go with --gen; --hub finds the files in the repository")
        from generator.interop.siuo_hub import import_from_hub

        store = RunStore.open(run)
        with store.writing(wait):
            report = import_from_hub(store, hub, cache_dir=hub_cache, revision=revision, strict=strict)
        finish(report)
        return
    assert gen is not None  # one of --gen and --hub, checked above
    report = read_official(gen, mcqa_path=mcqa, images_dir=images, strict=strict)  # validate before writing
    store = RunStore.open(run)
    with store.writing(wait):
        write_import(store, report)
    finish(report)


@app.command("export-siuo")
@clean_errors
def export_siuo_cmd(
    run: str = RunOpt,
    out: Path = typer.Option(..., "--out", help="Folder to write siuo_gen.json and siuo_mcqa.json into."),
    target: str | None = typer.Option(
        None, "--target", help="Whose responses to include (default: the first target found)."
    ),
    split: str | None = typer.Option(None, "--split", help="Only cases of this split (siuo, generated, hardened)."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into a non-empty --out that is not an earlier export of this kind (never over the run's inputs).",
    ),
) -> None:
    """Write a run's cases (and responses) back in the official SIUO format."""
    from generator.interop.siuo import export_siuo
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    written = export_siuo(store, out, target=target, split=split, force=force)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


@app.command("export-hf")
@clean_errors
def export_hf_cmd(
    run: str = RunOpt,
    out: Path = typer.Option(
        ..., "--out", help="Folder for the dataset: data/*.parquet + README.md (the dataset card)."
    ),
    splits: list[str] = typer.Option(
        ["generated", "hardened"], "--split", help="Splits to export (repeatable): siuo, generated, hardened."
    ),
    controls: bool = typer.Option(
        False, "--controls", help="Add a `control` split: each image with its harmless control question."
    ),
    license: str | None = typer.Option(
        None, "--license", help="Licence id for the card (default and required with --split siuo: cc-by-nc-4.0)."
    ),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Then publish it as this hub dataset repo (needs HF_TOKEN or `hf auth login`)."
    ),
    public: bool = typer.Option(False, "--public", help="With --push-to-hub: make the repo public (default private)."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into a non-empty --out that is not an earlier export of this kind (never over the run's inputs).",
    ),
) -> None:
    """Write the run's cases as a Hugging Face dataset (load_dataset(OUT): one split per run split)."""
    from generator.interop.hf import export_hf
    from generator.interop.hf import push_to_hub as push
    from generator.store import RunStore

    result = export_hf(
        RunStore.open(run, create=False), out, tuple(splits), controls=controls, license=license, force=force
    )
    per_split = ", ".join(f"{s}: {n}" for s, n in result.per_split.items())
    console.print(
        f"wrote {result.written} cases ({per_split}) in {len(result.shards)} parquet shard(s) + README.md to {out}",
        highlight=False,
        soft_wrap=True,
    )
    if result.skipped_missing_image:
        console.print(f"{len(result.skipped_missing_image)} case(s) without an image left out", highlight=False)
    if push_to_hub:
        push(out, push_to_hub, private=not public)
        console.print(f"pushed to the hub dataset {push_to_hub}", highlight=False)


@app.command("export-vlmevalkit")
@clean_errors
def export_vlmevalkit_cmd(
    run: str = RunOpt,
    out: Path = typer.Option(..., "--out", help="Folder for the TSVs and siuo_vlmevalkit.py (use it as $LMUData)."),
    splits: list[str] = typer.Option(["generated", "hardened"], "--split", help="Splits to export (repeatable)."),
    name: str | None = typer.Option(
        None, "--name", help="Dataset tag: SIUO_GEN_<name>, SIUO_MCQ_<name> (default: the run name)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into a non-empty --out that is not an earlier export of this kind (never over the run's inputs).",
    ),
) -> None:
    """Write the run's cases as VLMEvalKit TSVs (SIUO layout) plus a module that registers them."""
    from generator.interop.vlmevalkit import REGISTER_MODULE, export_vlmevalkit
    from generator.store import RunStore

    result = export_vlmevalkit(RunStore.open(run, create=False), out, tuple(splits), tag=name, force=force)
    for dataset, path in result.files.items():
        console.print(f"wrote {path} ({result.rows[dataset]} rows): dataset {dataset}", highlight=False, soft_wrap=True)
    console.print(f"register them with {out / REGISTER_MODULE} (see its docstring)", highlight=False, soft_wrap=True)
    if result.skipped_missing_image:
        console.print(f"{len(result.skipped_missing_image)} case(s) without an image left out", highlight=False)


@app.command("export-lmms-eval")
@clean_errors
def export_lmms_eval_cmd(
    run: str = RunOpt,
    out: Path = typer.Option(..., "--out", help="Task folder for lmms-eval's --include_path."),
    splits: list[str] = typer.Option(
        ["generated", "hardened"], "--split", help="Splits to export (repeatable): one task each."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Task tag: siuo_<name>_<split>, group siuo_<name> (default: the run name)."
    ),
    protocol: str = typer.Option("siuo", "--protocol", help="Judge prompts process_results uses: siuo or strict."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write into a non-empty --out that is not an earlier export of this kind (never over the run's inputs).",
    ),
) -> None:
    """Write an lmms-eval task folder (dataset, YAML per split, group YAML, utils.py) for the run's cases."""
    from generator.evaluate.protocol import PROTOCOLS
    from generator.interop.lmms_eval import export_lmms_eval
    from generator.store import RunStore

    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    result = export_lmms_eval(
        RunStore.open(run, create=False), out, tuple(splits), tag=name, protocol=protocol, force=force
    )
    console.print(
        f"wrote {out}: tasks {', '.join(result.tasks)} (group {result.group}); run with "
        f"`lmms-eval --include_path {out} --tasks {result.group} ...`",
        highlight=False,
        soft_wrap=True,
    )
    if result.skipped_missing_image:
        console.print(f"{len(result.skipped_missing_image)} case(s) without an image left out", highlight=False)
    if result.environment_problem:
        console.print(f"[bold yellow]warning:[/] {result.environment_problem}", highlight=False, soft_wrap=True)


@app.command("import-responses")
@clean_errors
def import_responses_cmd(
    file: Path = typer.Argument(
        ..., help="The other tool's answers: VLMEvalKit .xlsx/.tsv, lmms-eval samples_*.jsonl, inspect .eval log."
    ),
    fmt: str = typer.Option(..., "--format", help="vlmevalkit | lmms-eval | inspect."),
    run: str = RunOpt,
    target: str = typer.Option(
        ..., "--target", help="Name the answers are recorded under (as a target of `siuo answer`)."
    ),
    form: str | None = typer.Option(None, "--form", help="gen | mcqa | control (default: what the file says)."),
    model: str | None = typer.Option(
        None, "--model", help="Model id to record (default: what the file says, else the target)."
    ),
    protocol: str = typer.Option("siuo", "--protocol", help="Protocol the responses are judged and scored under."),
    max_samples: int = typer.Option(
        16,
        "--max-samples",
        help="Samples imported per case and form at most (higher sample indices are left out, counted).",
    ),
    max_chars: int = typer.Option(
        32_000, "--max-chars", help="Characters kept of an answer at most (a longer one is cut, counted)."
    ),
    wait: bool = WaitOpt,
) -> None:
    """Bring in answers another eval framework produced, as responses of the run (then judge, score, report)."""
    from generator.interop.responses_in import import_responses
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    with store.writing(wait):
        report = import_responses(
            store,
            fmt,
            file,
            target,
            form=form,
            model=model,
            protocol=protocol,
            max_samples=max_samples,
            max_chars=max_chars,
        )
    finish(report)


# ----------------------------------------------------------------------------------------------------
# Generation: propose, harden, render, check, accept, review
# ----------------------------------------------------------------------------------------------------


@app.command("propose")
@clean_errors
def propose_cmd(
    run: str = RunOpt,
    domains: str = typer.Option("all", "--domains", help="`all` or comma-separated domain ids."),
    per_domain: int | None = typer.Option(
        None, "--per-domain", help="Cases to ask for per domain (default: propose.per_domain)."
    ),
    seed_run: str | None = typer.Option(
        None, "--seed-run", help="A run whose cases are the few-shot examples (e.g. the imported official set)."
    ),
    model: str = typer.Option("proposer", "--model", help="Role or endpoint name of the proposer."),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="Your own template instead of prompts/propose.md."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Ask again the proposals whose failure is recorded."
    ),
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Ask an LLM for new SIUO cases per safety domain; near-duplicates are kept but marked."""
    from generator.config import load_settings
    from generator.generate.propose import propose
    from generator.store import RunStore

    settings = load_settings(config)
    store = RunStore.open(run)
    with store.writing(wait):
        summary = propose(
            store,
            settings,
            domains=domains,
            per_domain=per_domain,
            seed_run=seed_run,
            model=model,
            prompt_file=prompt_file,
            retry_failed=retry_failed,
            console=console,
        )
    finish(summary)


@app.command("harden")
@clean_errors
def harden_cmd(
    run: str = RunOpt,
    from_run: str | None = typer.Option(
        None, "--from-run", help="Harden the cases of this run (e.g. the official set) instead of this run's proposals."
    ),
    strategies: str | None = typer.Option(
        None, "--strategies", help="Comma-separated strategy ids (default: propose.harden_strategies)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Harden only the first N parent cases."),
    model: str = typer.Option("proposer", "--model", help="Role or endpoint name of the model that rewrites."),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="Your own template instead of prompts/harden.md."
    ),
    strategies_file: Path | None = typer.Option(
        None, "--strategies-file", help="Your own strategies TOML instead of prompts/harden_strategies.toml."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Ask again the variants whose failure is recorded."
    ),
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Make harder variants of existing cases, one per (case, strategy)."""
    from generator.config import load_settings
    from generator.generate.harden import harden
    from generator.store import RunStore

    names = comma_list(strategies) if strategies else None
    settings = load_settings(config)
    store = RunStore.open(run)
    with store.writing(wait):
        summary = harden(
            store,
            settings,
            from_run=from_run,
            strategies=names,
            limit=limit,
            model=model,
            prompt_file=prompt_file,
            strategies_file=strategies_file,
            retry_failed=retry_failed,
            console=console,
        )
    finish(summary)


@app.command("search")
@clean_errors
def search_cmd(
    run: str = RunOpt,
    from_run: str | None = typer.Option(
        None,
        "--from-run",
        help="Search from the cases of this run (e.g. the official set) instead of this run's proposals.",
    ),
    strategies: str | None = typer.Option(None, "--strategies", help="Comma-separated strategy ids (default: all)."),
    limit: int | None = typer.Option(None, "--limit", help="Search from the first N parent cases only."),
    proof: bool = typer.Option(
        False, "--proof", help="Then ask the held-out panel (search.heldout, search.heldout_judges)."
    ),
    allow_weak_judges: bool = typer.Option(
        False, "--allow-weak-judges", help="Start even when a judge is under search.judge_accuracy_floor."
    ),
    blind_run: str | None = typer.Option(
        None, "--blind-run", help="With --proof: compare against this run's blind `harden` variants."
    ),
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Target-in-the-loop hardening: keep the variants that fool the search panel (see README, "Search")."""
    from generator.config import load_settings
    from generator.search.loop import search
    from generator.search.proof import heldout_proof
    from generator.store import RunStore

    names = comma_list(strategies) if strategies else None
    settings = load_settings(config)
    store = RunStore.open(run)
    with store.writing(wait):
        summary = search(
            store,
            settings,
            from_run=from_run,
            limit=limit,
            strategies=names,
            allow_weak_judges=allow_weak_judges,
            console=console,
        )
        if proof:
            out = heldout_proof(store, settings, blind_run=blind_run)
            for name in ("parents", "search", "blind"):
                g = out.get(name)
                if g and g["rate"] is not None:
                    summary.proof.append(
                        f"held-out fool rate, {name}: {g['rate']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}] "
                        f"({g['k']}/{g['n']} answers, {g['cases']} cases)"
                    )
            paired = out["search_paired"]
            summary.proof.append(
                f"paired (parent, variant): only variant fooled {paired['only_variant_fooled']}, only parent "
                f"{paired['only_parent_fooled']}, McNemar exact p = {paired['p_value']:.4g}"
            )
            if out.get("ratio_search_to_blind") is not None:
                summary.proof.append(f"search / blind held-out fool rate: {out['ratio_search_to_blind']:.2f}")
    finish(summary)


def _with_executor(settings, executor: str | None):
    """`--executor` over `[executor] kind`."""
    if executor is None:
        return settings
    if executor not in ("local", "ray"):
        raise UserError(f"--executor: unknown executor {executor!r} (use local or ray)")
    settings.executor = settings.executor.model_copy(update={"kind": executor})
    return settings


@app.command("render")
@clean_errors
def render_cmd(
    run: str = RunOpt,
    model: str | None = typer.Option(None, "--model", help="Diffusers hub id or local folder (default: render.model)."),
    candidates: int | None = typer.Option(None, "--candidates", min=1, help="Images per scenario."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Denoising steps."),
    batch: int | None = typer.Option(None, "--batch", min=1, help="Prompts per pipeline call."),
    backend: str | None = typer.Option(None, "--backend", help="diffusers | images_api | photos."),
    photos: Path | None = typer.Option(None, "--photos", help="Folder of real photos (backend photos)."),
    device: str | None = typer.Option(None, "--device", help="auto | cuda | cpu | mps."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try again the images whose failure is recorded."),
    executor: str | None = ExecutorOpt,
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Render (or pick from a photo folder) image candidates for the run's scenarios."""
    from generator.config import load_settings
    from generator.render.stage import render
    from generator.store import RunStore

    settings = _with_executor(load_settings(config), executor)
    if backend is not None and backend not in ("diffusers", "images_api", "photos"):
        raise UserError(f"--backend: unknown backend {backend!r} (use diffusers, images_api or photos)")
    given = dict(
        model=model,
        candidates=candidates,
        steps=steps,
        batch=batch,
        backend=backend,
        photos_dir=str(photos) if photos else None,
        device=device,
    )
    settings.render = settings.render.model_copy(update={k: v for k, v in given.items() if v is not None})
    store = RunStore.open(run, create=False)
    with store.writing(wait):
        report = render(store, settings, retry_failed=retry_failed, console=console)
    finish(report)


@app.command("check")
@clean_errors
def check_cmd(
    run: str = RunOpt,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Run again the checks that could not run."),
    executor: str | None = ExecutorOpt,
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Check each scenario: image and text benign alone, image aligned, the pair carrying the hazard."""
    from generator.checks.stage import check
    from generator.config import load_settings
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    settings = load_settings(config)  # a bad config is refused before the run is locked
    with store.writing(wait):
        report = check(store, _with_executor(settings, executor), retry_errors=retry_errors, console=console)
    finish(report)


@app.command("calibrate")
@clean_errors
def calibrate_cmd(
    run: str = RunOpt,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Run again the checks that could not run."),
    judges: str | None = typer.Option(
        None, "--judges", help="Calibrate these judges (comma-separated roles or endpoints) instead of the checks."
    ),
    writer: str = typer.Option("proposer", "--writer", help="With --judges: role writing the known-unsafe replies."),
    limit: int | None = typer.Option(None, "--limit", help="With --judges: the first N cases only."),
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Measure each check on known-good (human SIUO) and known-bad (leaky, mismatched, unsafe) inputs;
    with --judges, each judge on known-safe and known-unsafe responses."""
    if judges:
        _calibrate_judges(run, comma_list(judges), writer, limit, config, wait)
        return
    from rich.table import Table

    from generator.checks.calibrate import (
        CALIBRATION_FILE,
        MEANING,
        calibrate,
        curve_tables,
        input_lines,
        summary_table,
    )
    from generator.config import load_settings
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    with store.writing(wait):
        cal = calibrate(store, load_settings(config), retry_errors=retry_errors, console=console)
    for line in input_lines(cal):
        console.print(printable(line), highlight=False, soft_wrap=True)
    for title, (header, rows) in [("checks", summary_table(cal)), *((t, (h, r)) for t, h, r in curve_tables(cal))]:
        table = Table(title=printable(title), title_justify="left")
        for h in header:
            table.add_column(printable(h))
        for row in rows:
            table.add_row(*(printable(c) for c in row))
        console.print(table)
    console.print(MEANING.format(target=100 * cal["target"]), highlight=False, soft_wrap=True)
    named = [f"TOO STRICT: {n}" for n in cal["too_strict"]] + [
        f"TOO LAX: {n} (on {', '.join(k)})" for n, k in cal["too_lax"].items()
    ]
    console.print(
        printable("; ".join(named) or "no check named too strict or too lax"), highlight=False, soft_wrap=True
    )
    console.print(f"wrote {printable(str(store.path / CALIBRATION_FILE))}", highlight=False, soft_wrap=True)
    exit_if_failed(cal["new_errors"], cal["new_results"], what="check(s)", retry="--retry-errors")


def _calibrate_judges(run: str, judges: list[str], writer: str, limit: int | None, config, wait: bool) -> None:
    from generator.config import load_settings
    from generator.evaluate.judge_calibration import CAL_FILE, calibrate_judges
    from generator.evaluate.score import fmt_rate
    from generator.evaluate.scores_model import Rate
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    with store.writing(wait):
        cal = calibrate_judges(store, load_settings(config), judges, writer=writer, limit=limit)
    for name, figures in cal["judges"].items():
        accuracy, on_safe, on_unsafe = (
            Rate.model_validate(figures[k]) for k in ("accuracy", "on_known_safe", "on_known_unsafe")
        )
        console.print(
            printable(
                f"judge {name}: accuracy {fmt_rate(accuracy)}; known-safe called safe "
                f"{fmt_rate(on_safe)}; known-unsafe called unsafe {fmt_rate(on_unsafe)}"
            ),
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"wrote {printable(str(store.path / CAL_FILE))}", highlight=False, soft_wrap=True)


@app.command("accept")
@clean_errors
def accept_cmd(run: str = RunOpt, config: Path | None = ConfigOpt, wait: bool = WaitOpt) -> None:
    """Write the cases that passed every enabled check, and the filter report."""
    from generator.checks.accept import accept
    from generator.config import load_settings
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    settings = load_settings(config)  # a bad config is refused before the run is locked
    with store.writing(wait):
        report = accept(store, settings)
    finish(report)


@app.command("review")
@clean_errors
def review_cmd(
    run: str = RunOpt,
    reviewer: str = typer.Option("me", "--reviewer", help="Your name, recorded with each decision."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Write an HTML review sheet here instead of asking."),
    split: str | None = typer.Option(None, "--split", help="Review this split (default: generated + hardened)."),
    serve: bool = typer.Option(False, "--serve", help="Serve the review web app (several reviewers, in a browser)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="With --serve: address to listen on (not loopback: needs --token)."
    ),
    port: int = typer.Option(8765, "--port", help="With --serve: port to listen on."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="SIUO_REVIEW_TOKEN",
        help="With --serve: access token every request must present (required off loopback).",
    ),
    wait: bool = WaitOpt,
) -> None:
    """Accept / reject / edit the accepted cases: in the browser (--serve), the terminal, or an HTML sheet."""
    from generator.review.sheet import write_review_sheet
    from generator.review.terminal import review_interactive
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    if serve:
        try:
            from generator.review.app import serve as serve_app
        except ImportError as exc:
            raise UserError(f'the review app needs the `review` extra (pip install -e ".[review]"): {exc}') from None
        shown_host = f"[{host}]" if ":" in host else host
        console.print(
            f"review {run} at http://{shown_host}:{port}/"
            + ("?token=<your token>" if token else "")
            + "  (Ctrl+C stops)",
            highlight=False,
        )
        serve_app(store, host=host, port=port, token=token)
        return
    if sheet is not None:
        n = write_review_sheet(store, sheet, split=split)
        console.print(f"wrote {sheet} ({n} cases)", highlight=False)
        return
    with store.writing(wait):
        counts = review_interactive(store, reviewer, console=Console(), split=split)
    console.print(
        f"accepted {counts['accept']}, rejected {counts['reject']}, skipped {counts['skip']}", highlight=False
    )


# ----------------------------------------------------------------------------------------------------
# Evaluation: answer, judge, score, report
# ----------------------------------------------------------------------------------------------------


@app.command("answer")
@clean_errors
def answer_cmd(
    run: str = RunOpt,
    target: str = typer.Option("targets", "--target", help="Role or endpoint name of the VLM(s) to evaluate."),
    samples: int | None = typer.Option(
        None,
        "--samples",
        help="Open answers per case (default: 3 under protocol siuo, bench.samples under strict; MCQA follows the protocol).",
    ),
    mcqa: bool = typer.Option(False, "--mcqa", help="Ask the multiple-choice form (an option letter) instead."),
    controls: bool = typer.Option(False, "--controls", help="Also ask safe control pairs (over-refusal)."),
    split: str | None = typer.Option(None, "--split", help="Only cases of this split (siuo, generated, hardened)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Ask failed calls again."),
    protocol: str | None = ProtocolOpt,
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Send each case's image and question to a target VLM; responses go to responses.jsonl."""
    from generator.config import load_settings
    from generator.evaluate.answer import answer
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    settings = load_settings(config)  # a bad config is refused before the run is locked
    with store.writing(wait):
        reports = answer(
            store,
            settings,
            target,
            samples=samples,
            mcqa=mcqa,
            controls=controls,
            split=split,
            retry_failed=retry_failed,
            protocol=protocol,
        )
    finish(*reports)


@app.command("judge")
@clean_errors
def judge_cmd(
    run: str = RunOpt,
    judges: list[str] = typer.Option(["judge"], "--judge", help="Judge role or endpoint; repeat for several judges."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Ask failed judge calls again."),
    protocol: str | None = ProtocolOpt,
    config: Path | None = ConfigOpt,
    wait: bool = WaitOpt,
) -> None:
    """Rate every response for safety and effectiveness (controls: refusal); judgments.jsonl."""
    from generator.config import load_settings
    from generator.evaluate.judge import judge
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    settings = load_settings(config)  # a bad config is refused before the run is locked
    with store.writing(wait):
        report = judge(store, settings, judges, retry_failed=retry_failed, protocol=protocol)
    finish(report)


@app.command("score")
@clean_errors
def score_cmd(
    run: str = RunOpt, protocol: str | None = ProtocolOpt, config: Path | None = ConfigOpt, wait: bool = WaitOpt
) -> None:
    """Safe / effective / safe-and-effective rates per target, split and domain; scores.json."""
    from generator.config import load_settings
    from generator.evaluate.score import score, score_tables
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    ties = load_settings(config).bench.ties  # judge ties: against the model, or left out (and counted)
    out = Console()
    with store.writing(wait):
        scores = score(store, protocol, ties)
    for table in score_tables(scores):
        out.print(table)
    console.print(f"wrote {store.path / 'scores.json'}", highlight=False)


@app.command("report")
@clean_errors
def report_cmd(run: str = RunOpt, wait: bool = WaitOpt) -> None:
    """Write report.md and a self-contained report.html (plots, examples, reference figures)."""
    from generator.evaluate.report import report
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    with store.writing(wait):
        paths = report(store)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)


# ----------------------------------------------------------------------------------------------------
# The whole pipeline, and what a run holds
# ----------------------------------------------------------------------------------------------------


@app.command("run")
@clean_errors
def run_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline config TOML (see configs/)."),
    run: str | None = typer.Option(None, "--run", help="Run folder name (default: pipeline.run in the config)."),
    protocol: str | None = ProtocolOpt,
    executor: str | None = ExecutorOpt,
    wait: bool = WaitOpt,
) -> None:
    """The whole pipeline: import, propose, harden, render, check, accept, answer, judge, score, report."""
    from generator.config import load_settings
    from generator.pipeline import run_pipeline, summary_panel

    settings = _with_executor(load_settings(config), executor)
    if protocol is not None:
        from generator.evaluate.protocol import resolve_protocol

        resolve_protocol(settings, protocol)  # an unknown name fails here, before any stage runs
        settings = settings.model_copy(update={"bench": settings.bench.model_copy(update={"protocol": protocol})})
    result = run_pipeline(settings, run=run, console=console, wait=wait)
    Console().print(summary_panel(result))
    if result.stopped:  # too many failed requests, or the budget reached: stages were left undone
        console.print(f"[bold yellow]stopped:[/] {printable(result.stopped or '')}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED_RECORDS)
    exit_if_failed(0, 0, skipped=result.incomplete)


@app.command("init")
@clean_errors
def init_cmd(
    template: str = typer.Option("offline", "--template", help="offline | openai | local (see configs/)."),
    out: Path = typer.Option(Path("siuo.toml"), "--out", help="Where to write the starter config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a starter config from one of the example profiles."""
    from generator.config import write_starter_config

    write_starter_config(template, out, force=force)
    console.print(
        f"wrote {out} (from the {template} profile): edit endpoints and roles, then `siuo run -c {out}`",
        highlight=False,
    )


@app.command("stats")
@clean_errors
def stats_cmd(run: str = RunOpt) -> None:
    """Counts per domain and per record type."""
    from generator.inventory import stats_tables
    from generator.store import RunStore

    store = RunStore.open(run, create=False)
    out = Console()
    for table in stats_tables(store):
        out.print(table)


# ----------------------------------------------------------------------------------------------------
# Models and the request cache
# ----------------------------------------------------------------------------------------------------

models_app = typer.Typer(help="Model endpoints: check what each configured endpoint can do.", no_args_is_help=True)
cache_app = typer.Typer(help="The request cache (SQLite) that makes re-runs free.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")


@models_app.command("check")
@clean_errors
def models_check_cmd(
    endpoint: list[str] | None = typer.Option(None, "--endpoint", "-e", help="Only this endpoint (repeatable)."),
    config: Path | None = ConfigOpt,
) -> None:
    """Ping each endpoint with one tiny request: reachable, latency, images, JSON schema."""
    import asyncio

    from generator.config import load_settings
    from generator.models.probe import check_endpoints, check_table

    rows = asyncio.run(check_endpoints(load_settings(config), endpoint or None))
    Console().print(check_table(rows))
    if any(r.reachable is False for r in rows):
        raise typer.Exit(1)


@cache_app.command("stats")
@clean_errors
def cache_stats_cmd(config: Path | None = ConfigOpt) -> None:
    """Entries and size of the request cache."""
    from generator.config import load_settings
    from generator.models.cache import RequestCache

    path = Path(load_settings(config).cache.path)
    if not path.exists():
        Console().print(f"{path}: no cache yet (0 entries)", highlight=False)
        return
    cache = RequestCache(path)
    st = cache.stats()
    cache.close()
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(st.by_kind.items())) or "none"
    Console().print(f"{st.path}: {st.entries} entries ({kinds}), {st.size_bytes / 1e6:.2f} MB", highlight=False)


@cache_app.command("clear")
@clean_errors
def cache_clear_cmd(config: Path | None = ConfigOpt) -> None:
    """Delete every cached reply (the next run asks the models again)."""
    from generator.config import load_settings
    from generator.models.cache import RequestCache

    path = Path(load_settings(config).cache.path)
    if not path.exists():
        console.print(f"{path}: no cache yet, nothing to clear", highlight=False)
        return
    cache = RequestCache(path)
    removed = cache.clear()
    cache.close()
    console.print(f"cleared {removed} cached replies from {cache.path}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
