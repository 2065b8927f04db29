"""`siuo import-siuo --hub REPO` (issue 23) against hub-shaped snapshots on this machine, never the network:
a local folder laid out like the repository, and a pre-filled hub cache read offline. The images archive
is unpacked inside the run, and archives that escape the folder, hold links or unpack too big are refused."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from generator.cli import app
from generator.interop import siuo_hub
from generator.records import Case
from generator.store import RunStore

DATA = Path(__file__).resolve().parents[1] / "data"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _image_names() -> list[str]:
    return [item["image"] for item in json.loads((DATA / "siuo_mini_gen.json").read_text())]


def hub_layout(root: Path, members: dict[str, bytes] | None = None) -> Path:
    """A folder laid out like the SIUO hub repository: the two question files and SIUO-images.zip."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("siuo_gen.json", "siuo_mcqa.json"):
        (root / name).write_bytes((DATA / name.replace("siuo_", "siuo_mini_")).read_bytes())
    if members is None:
        members = {}
        for name in _image_names():
            png = root / "tmp.png"
            Image.new("RGB", (4, 4), (1, 2, 3)).save(png)
            members[f"SIUO-images/{name}"] = png.read_bytes()
            png.unlink()
    with zipfile.ZipFile(root / "SIUO-images.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return root


def _invoke(tmp_path, monkeypatch, *args: str):
    monkeypatch.setenv("SIUO_OUTPUTS", str(tmp_path / "outputs"))
    return CliRunner().invoke(app, ["import-siuo", *args, "--run", "official"])


def test_import_from_a_hub_shaped_folder_unpacks_into_the_run(tmp_path, monkeypatch):
    repo = hub_layout(tmp_path / "repo")
    result = _invoke(tmp_path, monkeypatch, "--hub", str(repo))
    assert result.exit_code == 0, result.output
    store = RunStore.open("official", root=tmp_path / "outputs")
    cases = store.read(Case)
    assert len(cases) == len(_image_names()) and not any(c.image_missing for c in cases)
    images = (store.path / siuo_hub.IMAGES_DIR).resolve()
    assert all(Path(c.image_path).resolve().is_relative_to(images) for c in cases)
    assert all(c.options for c in cases)  # the MCQA file was found and read too
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["sources"]["siuo"]["hub"] == {"repo": str(repo), "revision": None}
    # a second import unpacks nothing again and rewrites no case
    before = (store.path / "cases.jsonl").read_bytes()
    mark = images / siuo_hub.UNPACKED_MARK
    stamp = mark.stat().st_mtime_ns
    assert _invoke(tmp_path, monkeypatch, "--hub", str(repo)).exit_code == 0
    assert mark.stat().st_mtime_ns == stamp and (store.path / "cases.jsonl").read_bytes() == before


def test_import_from_a_prefilled_hub_cache_offline(tmp_path, monkeypatch):
    """The hub cache as snapshot_download leaves it (refs/main -> snapshots/<commit>/...), read offline."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub-cache"
    repo_dir = cache / "datasets--siuo-test--siuo"
    hub_layout(repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    result = _invoke(tmp_path, monkeypatch, "--hub", "siuo-test/siuo", "--hub-cache", str(cache))
    assert result.exit_code == 0, result.output
    cases = RunStore.open("official", root=tmp_path / "outputs").read(Case)
    assert len(cases) == len(_image_names()) and not any(c.image_missing for c in cases)
    # a repository that is not in the cache: one line, exit 2
    result = _invoke(tmp_path, monkeypatch, "--hub", "siuo-test/absent", "--hub-cache", str(cache))
    assert result.exit_code == 2 and "not in the local cache" in result.output and "Traceback" not in result.output


def _link_member(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("escape", "would be written outside the images folder"),
        ("absolute", "would be written outside the images folder"),
        ("link", "is a link: refused"),
        ("bomb", "unpacks to more than"),
        ("many", "more than 5 files"),
    ],
)
def test_unsafe_archives_are_refused_and_leave_nothing(tmp_path, monkeypatch, kind, message):
    monkeypatch.setattr(siuo_hub, "MAX_UNPACKED_BYTES", 10_000)
    monkeypatch.setattr(siuo_hub, "MAX_FILES", 5)
    repo = hub_layout(tmp_path / "repo", {"SIUO-images/ok.png": b"x"})
    with zipfile.ZipFile(repo / "SIUO-images.zip", "a", compression=zipfile.ZIP_DEFLATED) as zf:
        if kind == "escape":
            zf.writestr("../../escaped.png", b"x")
        elif kind == "absolute":
            zf.writestr("/tmp/absolute.png", b"x")
        elif kind == "link":
            _link_member(zf, "SIUO-images/link.png", "/etc/passwd")
        elif kind == "bomb":
            zf.writestr("SIUO-images/big.png", b"\0" * 1_000_000)  # compresses to about 1 kB
        else:
            for i in range(6):
                zf.writestr(f"SIUO-images/{i}.png", b"x")
    result = _invoke(tmp_path, monkeypatch, "--hub", str(repo))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    run = tmp_path / "outputs" / "official"
    assert not (run / siuo_hub.IMAGES_DIR).exists() and not (run / (siuo_hub.IMAGES_DIR + ".partial")).exists()
    assert not (tmp_path / "escaped.png").exists() and not (run / "cases.jsonl").exists()


def test_gen_and_hub_are_exclusive(tmp_path, monkeypatch):
    result = _invoke(tmp_path, monkeypatch, "--hub", "x/y", "--gen", str(DATA / "siuo_mini_gen.json"))
    assert result.exit_code == 2 and "either --gen FILE" in result.output
    result = _invoke(tmp_path, monkeypatch)
    assert result.exit_code == 2 and "either --gen FILE" in result.output
