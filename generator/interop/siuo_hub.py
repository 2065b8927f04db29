"""The official SIUO set from the Hugging Face hub: question files and the images archive, fetched with
`huggingface_hub` (cached, resumable, `HF_TOKEN` honoured), the archive unpacked safely, then imported.

Why a snapshot and not `datasets`: the official release is two JSON files and a zip of images, not a
table; `snapshot_download` fetches exactly those files, keeps them in the hub cache (a second import
downloads nothing, an interrupted one resumes) and works offline from that cache (`HF_HUB_OFFLINE=1`).

No official repository id is documented (the README names none), so the repository is always given: a
hub dataset id (`owner/name`) or a local folder laid out like one. Layout read: `siuo_gen.json` and
(optional) `siuo_mcqa.json` anywhere in the snapshot, and the images either as a `.zip` archive (e.g.
`SIUO-images.zip`) or as loose files in a folder.

Why the unpacking is careful: an archive is outside input. Every member must stay inside the target
folder (no absolute path, no `..`, no drive letter), links are refused, and the total unpacked size and
file count are bounded (`MAX_UNPACKED_BYTES`, `MAX_FILES`), counting the bytes actually written, not the
sizes the archive claims (a decompression bomb lies about them).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from generator.errors import UserError
from generator.store import RunStore, write_text_atomic
from generator.untrusted import one_line

GEN_FILE, MCQA_FILE = "siuo_gen.json", "siuo_mcqa.json"
IMAGES_DIR = "siuo_images"
"""Folder of the run the images are unpacked into (the cases point at them)."""
UNPACKED_MARK = ".unpacked.json"
MAX_UNPACKED_BYTES = 4 * 1024**3
"""Most bytes an images archive may unpack to (the official images are about 400 MB)."""
MAX_FILES = 20_000
"""Most files an images archive may hold (the official set has 167 images)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_CHUNK = 1 << 20


class HubImportError(UserError):
    """The hub repository or its files cannot be used; the message names the repository or file."""


@dataclass(frozen=True)
class SiuoSnapshot:
    """Where the official files of one repository are on this machine."""

    root: Path
    gen: Path
    mcqa: Path | None
    archive: Path | None
    images: Path | None
    """A folder of loose images in the snapshot (when there is no archive)."""


def download_snapshot(repo: str, cache_dir: Path | None = None, revision: str | None = None) -> Path:
    """The snapshot folder of `repo`: a local folder as is, else the hub dataset downloaded (or read from
    the cache). Any hub failure is one line naming the repository."""
    local = Path(repo).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id=repo,
            repo_type="dataset",
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir else None,
            allow_patterns=["*.json", "*.zip", "*.png", "*.jpg", "*.jpeg", "*.webp"],
        )
    except LocalEntryNotFoundError as exc:
        raise HubImportError(
            f"hub dataset {repo!r}: not in the local cache and the hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE=1): {one_line(str(exc), 200)}"
        ) from None
    except HfHubHTTPError as exc:
        raise HubImportError(
            f"hub dataset {repo!r}: {one_line(str(exc), 200)} (a gated or private dataset needs HF_TOKEN)"
        ) from None
    except ValueError as exc:  # e.g. a malformed repository id
        raise HubImportError(f"hub dataset {repo!r}: {one_line(str(exc), 200)}") from None
    return Path(path)


def _one(root: Path, name: str) -> Path | None:
    found = sorted(p for p in root.rglob(name) if p.is_file())
    if len(found) > 1:
        raise HubImportError(f"{root}: {len(found)} files named {name} ({', '.join(str(p) for p in found[:3])})")
    return found[0] if found else None


def _required(root: Path, name: str) -> Path:
    found = _one(root, name)
    if found is None:
        raise HubImportError(f"{root}: no {name} in the repository (is it the official SIUO release?)")
    return found


def locate(root: Path) -> SiuoSnapshot:
    """The official files in a snapshot (see the module doc for the layout)."""
    gen = _required(root, GEN_FILE)
    mcqa = _one(root, MCQA_FILE)
    archives = sorted(p for p in root.rglob("*.zip") if p.is_file())
    if len(archives) > 1:
        named = [p for p in archives if "image" in p.name.lower()]
        if len(named) != 1:
            raise HubImportError(f"{root}: {len(archives)} zip archives and no single images archive among them")
        archives = named
    images = None
    if not archives:
        folders = sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()})
        images = folders[0] if len(folders) == 1 else None
    return SiuoSnapshot(root, gen, mcqa, archives[0] if archives else None, images)


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """The relative path an archive member may be written to, or an error naming it."""
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or (parts.parts and ":" in parts.parts[0]):
        raise HubImportError(f"{archive}: member {name!r} would be written outside the images folder")
    return parts


def safe_unzip(archive: Path, target: Path) -> int:
    """Unpack `archive` into `target` (which must not exist yet) within the bounds; returns the file count.

    Written into a temporary folder first and renamed at the end, so an interrupted or refused unpack
    leaves nothing half done."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    written = files = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(1 for m in members if not m.is_dir()) > MAX_FILES:
                raise HubImportError(f"{archive}: more than {MAX_FILES} files: refused (not an images archive?)")
            for m in members:
                rel = _member_path(m.filename, archive)
                if m.is_dir() or not rel.parts:
                    continue
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise HubImportError(f"{archive}: member {m.filename!r} is a link: refused")
                if rel.parts[0] == "__MACOSX" or rel.name.startswith("._"):
                    continue  # macOS resource forks, not images
                out = partial.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(out, "xb") as dst:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES:
                            raise HubImportError(
                                f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES // 1024**2} MB: refused "
                                "(a decompression bomb, or not the images archive)"
                            )
                        dst.write(chunk)
                files += 1
    except zipfile.BadZipFile as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise HubImportError(f"{archive}: not a readable zip archive ({exc})") from None
    except FileExistsError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise HubImportError(f"{archive}: member {exc.filename!r} appears twice: refused") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    write_text_atomic(partial / UNPACKED_MARK, json.dumps({"archive": archive.name, "files": files, "bytes": written}))
    os.replace(partial, target)
    return files


def images_folder(root: Path, names: list[str]) -> Path | None:
    """The folder under `root` holding most of the image files `names` (archives often add a top folder)."""
    best, best_hits = None, 0
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        hits = sum((folder / n).is_file() for n in names)
        if hits > best_hits:
            best, best_hits = folder, hits
    return best


def unpack_images(store: RunStore, snapshot: SiuoSnapshot) -> Path | None:
    """The run's folder of official images, unpacked once from the snapshot's archive (None: no images)."""
    if snapshot.archive is None:
        return snapshot.images
    target = store.path / IMAGES_DIR
    mark = target / UNPACKED_MARK
    if mark.is_file():
        try:
            if json.loads(mark.read_text(encoding="utf-8")).get("archive") == snapshot.archive.name:
                return target  # unpacked by an earlier import: nothing to do
        except (OSError, ValueError):
            pass
    if target.exists():
        shutil.rmtree(target)
    safe_unzip(snapshot.archive, target)
    return target


def import_from_hub(
    store: RunStore,
    repo: str,
    *,
    cache_dir: Path | None = None,
    revision: str | None = None,
    strict: bool = False,
    domains_file: str | None = None,
):
    """Fetch, unpack and import the official set of `repo` into the run; returns the `ImportReport`.

    The question files are validated before anything is unpacked or written."""
    from generator.interop.siuo import read_official, write_import

    snapshot = locate(download_snapshot(repo, cache_dir, revision))
    checked = read_official(snapshot.gen, snapshot.mcqa, None, False, domains_file)  # bad files stop here
    images = unpack_images(store, snapshot)
    if images is not None:
        images = images_folder(images, [c.image for c in checked.cases]) or images
    report = read_official(snapshot.gen, snapshot.mcqa, images, strict, domains_file)
    write_import(store, report)
    with store.update_manifest() as m:
        m.sources["siuo"]["hub"] = {"repo": repo, "revision": revision}
    return report
