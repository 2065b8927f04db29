"""Where model-local batch work runs: in this process (`local`) or on a Ray cluster (`ray`).

One shape for every model-local stage: a *loader* (a picklable zero-argument callable that loads the
model) and a *batch function* `fn(model, batch) -> list` (one result per item, in order). `map_batches`
yields `(batch index, results)` as batches finish; the caller, on the driver, writes the records. So the
run store keeps one writer, and resume, dedupe and the run lock behave the same under both executors.

Why Ray Data and not a scheduler of our own: `Dataset.map_batches` over an actor pool already loads the
model once per actor (a class-based UDF), places actors on GPUs (`num_gpus`), streams results back as
they finish, and restarts a dead actor and retries its batch (`max_restarts`, `max_task_retries`). A
batch function that raises is not retried (it would fail the same way): its exception comes back as
that batch's result and the caller records it, as the local executor does.

Each dataset row is one whole batch (`batch_size=1` rows per call), so the batches an actor sees are
exactly the caller's: a Ray render composes the same pipeline calls as a local one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.errors import UserError

log = logging.getLogger(__name__)

BatchFn = Callable[[Any, Sequence[Any]], list]


@dataclass(frozen=True)
class Loader:
    """A picklable recipe for a model, `fn(*args, **kwargs)`: called once per actor (or once on the driver)."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __call__(self) -> Any:
        return self.fn(*self.args, **self.kwargs)


def executor_settings(settings: Any) -> Any:
    """The `[executor]` section from a `Settings` (or an `ExecutorSettings` itself)."""
    return getattr(settings, "executor", settings)


def map_batches(
    settings: Any, loader: Callable[[], Any], batch_fn: BatchFn, batches: Sequence[Sequence[Any]], *, loaded: Any = None
) -> Iterator[tuple[int, list | Exception]]:
    """Yield `(i, batch_fn(model, batches[i]))` for every batch, as each finishes (any order under Ray).

    `loaded`: a model already loaded on the driver; the local executor uses it instead of calling
    `loader` (Ray actors always call `loader`). An exception raised by `batch_fn` is yielded as the result.
    """
    if not batches:
        return
    ex = executor_settings(settings)
    if ex.kind == "ray":
        yield from _ray_map(ex, loader, batch_fn, batches)
        return
    model = loaded if loaded is not None else loader()
    for i, batch in enumerate(batches):
        yield i, _call(batch_fn, model, batch)


def batches_of(settings: Any, items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """`items` in consecutive batches: `executor.batch_size` on Ray when set, else `batch_size`."""
    ex = executor_settings(settings)
    size = (ex.batch_size if ex.kind == "ray" else None) or batch_size
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _call(batch_fn: BatchFn, model: Any, batch: Sequence[Any]) -> list | Exception:
    try:
        result = list(batch_fn(model, batch))
    except Exception as exc:  # noqa: BLE001 - the caller records it per item
        log.warning("batch failed: %s", exc)
        return exc
    if len(result) != len(batch):
        return RuntimeError(f"batch function returned {len(result)} results for {len(batch)} items")
    return result


# ----------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def connect(ex: Any) -> None:
    """Join the cluster named by `executor.address` (once per process); a clear error when none answers."""
    if not ray_available():
        raise UserError("executor.kind = \"ray\" needs Ray: pip install 'siuo-generator[ray]' (or `ray[data]`)")
    import ray

    if ray.is_initialized():
        return
    address = None if ex.address == "local" else ex.address
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        ray.init(
            address=address,
            include_dashboard=None if address else False,
            log_to_driver=True,
            configure_logging=False,
            runtime_env=_runtime_env(),
        )
    except ConnectionError as exc:
        raise UserError(
            f"executor.address = {ex.address!r}: no Ray cluster answered ({exc}); start one with "
            '`ray start --head`, or set executor.address = "local" for a single-machine instance'
        ) from None


def _runtime_env() -> dict:
    """Workers import this package from the same place as the driver (an editable checkout included)."""
    root = str(Path(__file__).resolve().parents[1])
    return {
        "env_vars": {
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
            **{k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME") if k in os.environ},
        }
    }


class _BatchActor:
    """A Ray Data class-based UDF: loads the model once, then runs the batch function on each row's batch."""

    def __init__(self, loader: Callable[[], Any], batch_fn: BatchFn):
        self.batch_fn = batch_fn
        self.load_error: UserError | None = None
        try:
            self.model = loader()
        except UserError as exc:  # no such model: the driver stops with this one clear line, as locally
            self.load_error = exc

    def __call__(self, rows: dict) -> dict:
        from ray import cloudpickle

        out = []
        for payload in rows["batch"]:
            if self.load_error is not None:
                out.append(cloudpickle.dumps(_LoadFailed(str(self.load_error))))
            else:
                out.append(cloudpickle.dumps(_call(self.batch_fn, self.model, cloudpickle.loads(payload))))
        return {"i": rows["i"], "result": out}


@dataclass(frozen=True)
class _LoadFailed:
    message: str


def _ray_map(
    ex: Any, loader: Callable[[], Any], batch_fn: BatchFn, batches: Sequence[Sequence[Any]]
) -> Iterator[tuple[int, list | Exception]]:
    connect(ex)
    import ray.data
    from ray import cloudpickle

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the stage's own bar counts records; the Ray dashboard shows workers
    ctx.execution_options.preserve_order = False  # write each batch as soon as it is back
    rows = [{"i": i, "batch": cloudpickle.dumps(list(b))} for i, b in enumerate(batches)]
    ds: Any = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        _BatchActor,
        fn_constructor_args=(loader, batch_fn),
        batch_size=1,  # one row = one caller batch, never split or merged
        compute=ray.data.ActorPoolStrategy(size=min(ex.pool_size, len(rows))),
        num_gpus=ex.num_gpus or None,
        num_cpus=ex.num_cpus,
        # Ray Data's defaults for actor pools, relied on here: max_restarts=-1 (an actor that dies is
        # started again) and max_task_retries=-1 (its batch is run again on it).
    )
    started = time.perf_counter()
    try:
        for row in ds.iter_rows():
            result = cloudpickle.loads(row["result"])
            if isinstance(result, _LoadFailed):
                raise UserError(result.message)
            yield int(row["i"]), result
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):  # e.g. the model could not be loaded on a worker
            raise type(cause)(str(cause)) from None
        raise
    log.info("ray: %d batches in %.1f s on %d actor(s)", len(rows), time.perf_counter() - started, ex.pool_size)


# ----------------------------------------------------------------------------------------------------
# Model-local check units (generator/checks/): the unit is the model, `score_images` the batch function.
# ----------------------------------------------------------------------------------------------------


def loaded_unit(unit: Any) -> Any:
    """A check unit loaded where it will run (a unit pickles without its model: see LocalImageCheck)."""
    unit.load()
    return unit


def unit_batch(unit: Any, items: Sequence[tuple[Path, str]]) -> list:
    """`unit.score_images` over (image path, image description) items: one outcome (or exception) each."""
    texts = [t for _, t in items] if unit.uses_text else None
    return unit.score_images([p for p, _ in items], texts)
