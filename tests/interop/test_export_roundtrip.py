"""Any text survives every export format, read back by the reader each framework uses: pandas
`read_csv(sep="\\t")` (VLMEvalKit), `datasets.load_dataset` (Hugging Face, lmms-eval's data), the lmms-eval
YAML loader, `json` (SIUO's scripts). Measured hole: a bare CR in a question made VLMEvalKit read 7 rows
for 6 cases."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from generator.cli import app
from generator.records import Case

# The characters that break writers: line breaks of every kind, tab, quotes, NUL, `#`, YAML / CSV syntax.
NASTY = st.sampled_from(
    [
        "\r",
        "\n",
        "\r\n",
        "\t",
        '"',
        "'",
        "\x00",
        "\u2028",
        "\u2029",
        "\x85",
        "#",
        " # ",
        ": ",
        "- ",
        "\\",
        ",",
        "\ufeff",
        "{",
        "[",
        "&",
        "*",
        "!",
        "%",
        "@",
        "`",
        "|",
        ">",
    ]
)
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=8)), max_size=8).map("".join)
FIELDS = ("question", "safety_warning", "reference_answer")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _write_texts(store, texts: list[dict[str, str]]) -> list[Case]:
    """The run's first len(texts) cases with those texts (the run's other cases are kept as they are)."""
    cases = store.read(Case)
    for i, t in enumerate(texts):
        cases[i] = cases[i].model_copy(update=t)
    store.write_all(Case, cases)
    return cases


def test_a_bare_cr_no_longer_splits_a_vlmevalkit_row(interop_run, tmp_path):
    pd = pytest.importorskip("pandas")
    _write_texts(interop_run, [{"question": "first\rsecond"}])
    out = tmp_path / "lmu"
    r = CliRunner().invoke(
        app,
        [
            "export-vlmevalkit",
            "--run",
            "interop",
            "--out",
            str(out),
            "--split",
            "siuo",
            "--split",
            "generated",
            "--split",
            "hardened",
        ],
    )
    assert r.exit_code == 0, r.output
    gen = pd.read_csv(out / "SIUO_GEN_interop.tsv", sep="\t")
    assert len(gen) == 5 and gen["question_id"].notna().all()
    assert gen.loc[0, "question"] == "first\rsecond"


@settings(max_examples=60, **SETTINGS)
@given(texts=st.lists(st.fixed_dictionaries({f: TEXT for f in FIELDS}), min_size=1, max_size=5))
@pytest.mark.slow
def test_vlmevalkit_tsv_round_trips_any_text_through_pandas(interop_run, tmp_path_factory, texts):
    pd = pytest.importorskip("pandas")
    from pandas._libs.parsers import STR_NA_VALUES

    from generator.interop.vlmevalkit import export_vlmevalkit

    cases = _write_texts(interop_run, texts)
    out = tmp_path_factory.mktemp("lmu")
    export_vlmevalkit(interop_run, out, ("siuo", "generated", "hardened"), tag="t")
    for name in ("SIUO_GEN_t", "SIUO_MCQ_t"):
        frame = pd.read_csv(out / f"{name}.tsv", sep="\t")  # exactly VLMEvalKit's reader
        exported = [c for c in cases if c.image_path and (name == "SIUO_GEN_t" or c.options)]
        assert list(frame["question_id"].astype(str)) == [str(c.question_id) for c in exported]
        assert list(frame["index"]) == list(range(len(exported)))
        columns = FIELDS if name == "SIUO_GEN_t" else ("question",)
        for row, case in zip(frame.to_dict("records"), exported):
            for field in columns:
                col = "answer" if field == "reference_answer" else field
                want = getattr(case, field)
                if want in STR_NA_VALUES:  # pandas' own typing of its cells, not the file's framing
                    assert pd.isna(row[col])
                else:
                    assert row[col] == want, (field, want)


@settings(max_examples=80, **SETTINGS)
@given(
    texts=st.lists(st.fixed_dictionaries({f: TEXT for f in FIELDS}), min_size=1, max_size=6),
    responses=st.lists(TEXT, min_size=1, max_size=3),
)
def test_siuo_json_round_trips_any_text(interop_run, tmp_path_factory, texts, responses):
    from generator.interop.siuo import export_siuo
    from generator.records import Response

    cases = _write_texts(interop_run, texts)
    interop_run.write_all(
        Response,
        [Response(case_id=cases[0].key, target="m", model="m", sample=k, text=t) for k, t in enumerate(responses)],
    )
    out = tmp_path_factory.mktemp("siuo")
    export_siuo(interop_run, out)
    gen = json.loads((out / "siuo_gen.json").read_text(encoding="utf-8"))
    assert [i["question_id"] for i in gen] == [c.question_id for c in cases]
    for item, case in zip(gen, cases):
        assert all(item[f] == getattr(case, f) for f in FIELDS)
    assert gen[0]["responses"] == responses


@settings(max_examples=200, **SETTINGS)
@given(path=TEXT.filter(lambda t: t), run_texts=TEXT)
@pytest.mark.slow
def test_lmms_eval_task_yaml_round_trips_any_data_file_path(path, run_texts):
    """Any file name (a `#`, line breaks, quotes) reads back whole through lmms-eval's own YAML loader."""
    from generator.interop.lmms_eval import dump_yaml, task_yaml

    text = task_yaml(task="siuo_t_generated", split="generated", run="r", data_files=[path], repeats=3, protocol="siuo")
    data = _load_lmms_yaml(text)
    assert data["dataset_path"] == "parquet" and data["dataset_kwargs"] == {"data_files": {"generated": [path]}}
    assert data["task"] == "siuo_t_generated" and data["repeats"] == 3
    assert data["doc_to_visual"] == ("function", "utils.doc_to_visual")
    assert data["metric_list"][0]["aggregation"] == ("function", "utils.siuo_rate")
    assert _load_lmms_yaml(dump_yaml({"group": run_texts, "task": [run_texts]})) == {
        "group": run_texts,
        "task": [run_texts],
    }


def _load_lmms_yaml(text: str):
    """How lmms-eval reads a task YAML: PyYAML with a `!function` constructor (here a marker tuple, where lmms-eval
    imports the function from the task folder)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: safe


def test_export_lmms_eval_into_a_folder_named_with_a_hash_reads_back_whole_and_moves(interop_run, tmp_path):
    """The measured holes: `--out "dir #x"` wrote an unquoted value that read back cut at `#`, and the
    YAML's absolute dataset_path tied the folder to where it was written."""
    import shutil

    datasets = pytest.importorskip("datasets")
    out = tmp_path / "dir #x: y"
    r = CliRunner().invoke(app, ["export-lmms-eval", "--run", "interop", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "siuo_interop_generated.yaml").read_text(encoding="utf-8")
    assert str(tmp_path) not in text  # nothing absolute
    data = _load_lmms_yaml(text)
    [shard] = data["dataset_kwargs"]["data_files"]["generated"]
    assert shard.startswith("dataset/data/generated-") and (out / shard).is_file()
    assert _load_lmms_yaml((out / "siuo_interop.yaml").read_text()) == {
        "group": "siuo_interop",
        "task": ["siuo_interop_generated", "siuo_interop_hardened"],
    }
    moved = tmp_path / "elsewhere" / "tasks #2"
    moved.parent.mkdir()
    shutil.move(out, moved)
    try:
        from lmms_eval.utils import load_yaml_config
    except ImportError:
        return
    config = load_yaml_config(str(moved / "siuo_interop_generated.yaml"))  # lmms-eval's own loader
    [resolved] = config["dataset_kwargs"]["data_files"]["generated"]
    assert resolved == str(moved / shard) and callable(config["doc_to_visual"])
    rows = datasets.load_dataset("parquet", data_files=config["dataset_kwargs"]["data_files"], split="generated")
    assert rows["question_id"] == ["gen-sc-a", "gen-sc-b"] and rows[0]["image"].size == (8, 6)


@settings(max_examples=4, **SETTINGS)
@given(texts=st.lists(st.fixed_dictionaries({f: TEXT for f in FIELDS}), min_size=1, max_size=5))
def test_hf_export_round_trips_any_text_through_load_dataset(interop_run, tmp_path_factory, texts):
    """Few examples: each one builds a dataset (slow). `datasets` reads the parquet strings as written."""
    datasets = pytest.importorskip("datasets")
    from generator.interop.hf import export_hf

    cases = _write_texts(interop_run, texts)
    out = tmp_path_factory.mktemp("hf") / "ds"  # the same name every time: the cache must not confuse them
    export_hf(interop_run, out, ("siuo", "generated", "hardened"))
    dd = datasets.load_dataset(str(out))
    rows = {r["question_id"]: r for split in dd.values() for r in split}
    for case in cases:
        if case.image_path:
            row = rows[str(case.question_id)]
            assert row["question"] == case.question and row["safety_warning"] == case.safety_warning
            assert row["reference_answer"] == case.reference_answer
