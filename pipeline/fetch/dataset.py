"""Fetch a dataset from a URL, archive or folder (or generate the synthetic one) into ``data/raw/``,
and verify its content."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from ..core.errors import FetchError, write_failure
from ..core.files import atomic_dir, read_json, sha256_file, write_json
from ..core.sources import SYNTHETIC, SYNTHETIC_LINES, generated_source
from . import archive, folder, synthetic, synthetic_lines
from .download import DownloadError, download

# Files that operating systems drop into folders and archives; never part of a dataset.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"})
# What writes each generated source: generate(dest, count, classes).
GENERATORS = {SYNTHETIC: synthetic.generate, SYNTHETIC_LINES: synthetic_lines.generate}

OFFLINE_HINT = (
    "To use a local copy instead, point data.source at a .zip, .tar.gz or folder, e.g.\n"
    "  dvc exp run -S data.source=~/data/human-seg.zip\n"
    "or edit data.source in params.yaml. With no data at hand, the generated dataset needs no network:\n"
    "  dvc exp run -S data.source=synthetic -S data.manifest=null -S model.encoder_weights=null \\\n"
    "    -S 'data.classes=[background,shape]'\n"
    "(or `make demo`, which runs the whole pipeline on it in a separate copy of the project)."
)


def is_url(source: str) -> bool:
    return urlparse(source).scheme in {"http", "https"}


def build_manifest(root: str | Path) -> dict[str, str]:
    """Per-file SHA-256 of every file under ``root``, keyed by POSIX relative path.

    Digests of the files, not of the archive, so a re-packed archive of the same files
    (GitHub regenerates its archives) still verifies.
    """
    root = Path(root)
    return {path.relative_to(root).as_posix(): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}


def verify_manifest(root: Path, manifest_path: Path) -> None:
    try:
        expected: dict[str, str] = read_json(manifest_path)["files"]
    except FileNotFoundError:
        raise FetchError(f"data.manifest: {manifest_path} does not exist") from None
    except (ValueError, KeyError, TypeError):
        raise FetchError(
            f"data.manifest: {manifest_path} is not a manifest (expected JSON with a 'files' mapping)"
        ) from None
    actual = build_manifest(root)
    missing = sorted(expected.keys() - actual.keys())
    unexpected = sorted(actual.keys() - expected.keys())
    changed = sorted(name for name in expected.keys() & actual.keys() if expected[name] != actual[name])
    problems = [
        f"{label} ({len(names)}): {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("content differs", changed))
        if names
    ]
    if problems:
        raise FetchError(
            f"fetched data does not match the manifest {manifest_path}:\n  "
            + "\n  ".join(problems)
            + "\nIf this is a different dataset on purpose, set data.manifest: null "
            "(or write a manifest with `python -m pipeline manifest DIR --out FILE`)."
        )


def fetch_dataset(source: str, dest: Path, *, manifest: Path | None, cache_dir: Path, classes: int) -> Path:
    """Materialise ``source`` as ``dest`` (replaced atomically), verified against ``manifest``.
    ``classes`` (background included) is how many classes a generated source draws."""
    try:
        generated = generated_source(source)
    except ValueError as exc:
        raise FetchError(f"data.source: {source!r}: {exc}") from None
    if generated is not None and manifest is not None:
        raise FetchError(
            f"data.source is {source!r}, generated on the spot: there is nothing to check data.manifest against; "
            "set data.manifest: null"
        )
    with atomic_dir(dest) as staging:
        if generated is not None:
            GENERATORS[generated.generator](staging, generated.count, classes)
        else:
            _fetch_verified(source, staging, manifest=manifest, cache_dir=cache_dir)
    return dest


def _fetch_verified(source: str, staging: Path, *, manifest: Path | None, cache_dir: Path) -> None:
    unpacked = staging / ".unpack"
    root = _unpack(source, unpacked, cache_dir)
    for child in root.iterdir():
        os.replace(child, staging / child.name)
    shutil.rmtree(unpacked)
    if manifest is not None:
        try:
            verify_manifest(staging, manifest)
        except FetchError:
            if is_url(source):
                # A corrupt cached download must not be reused by the next attempt.
                _drop_cached(_cached_download(source, cache_dir))
            raise


def _cached_download(url: str, cache_dir: Path) -> Path:
    name = Path(urlparse(url).path).name or "download"
    return cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _cache_record(cached: Path) -> Path:
    """Size and SHA-256 of a cached download, recorded when it was downloaded."""
    return cached.with_name(cached.name + ".json")


def _cache_intact(cached: Path) -> bool:
    """Whether ``cached`` is still the file that was downloaded; a changed or unrecorded one is dropped."""
    if not cached.exists():
        return False
    try:
        record = read_json(_cache_record(cached))
        intact = record["bytes"] == cached.stat().st_size and record["sha256"] == sha256_file(cached)
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if not intact:
        print(f"fetch: the cached download {cached} is not the file that was downloaded; downloading again")
        cached.unlink()
    return intact


def _unpack(source: str, workdir: Path, cache_dir: Path) -> Path:
    if is_url(source):
        if urlparse(source).scheme == "http":
            print(
                f"fetch: warning: data.source {source} is plain http: anyone on the way can change the download. "
                "Use https, or check the files with data.manifest."
            )
        _extract_download(source, workdir, cache_dir)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FetchError(f"data.source: {source} does not exist (resolved to {path.resolve()}).\n{OFFLINE_HINT}")
        if path.is_dir():
            folder.copy_folder(path, workdir)
        else:
            try:
                _extract(path, workdir)
            except archive.NotAnArchiveError as exc:
                raise FetchError(
                    f"data.source: {source} is neither a folder nor a zip or tar archive: {str(exc).split(': ', 1)[1]}"
                ) from None
    _remove_junk(workdir)
    _check_names(workdir, source)
    entries = list(workdir.iterdir())
    # Archives usually wrap the dataset in one top folder (GitHub: <repo>-<branch>/).
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else workdir


def _drop_cached(cached: Path) -> None:
    cached.unlink(missing_ok=True)
    _cache_record(cached).unlink(missing_ok=True)


def _extract_download(url: str, workdir: Path, cache_dir: Path) -> None:
    """Download ``url`` (or reuse its cached copy) and extract it into ``workdir``.

    Only a readable archive stays in the cache: what the server sent is checked by content
    (an HTML page answered with status 200 is not a dataset), and a cached copy that is not an
    archive, or fails to extract, is deleted so that the next run asks the server again."""
    cached = _cached_download(url, cache_dir)
    if _cache_intact(cached) and archive.archive_kind(cached) is None:
        print(f"fetch: the cached download {cached} is not an archive; downloading again")
        _drop_cached(cached)
    if not cached.exists():
        try:
            download(url, cached)
        except DownloadError as exc:
            raise FetchError(f"could not download data.source: {exc}\n{OFFLINE_HINT}") from None
        if archive.archive_kind(cached) is None:
            what = archive.describe_content(cached)
            _drop_cached(cached)
            raise FetchError(
                f"data.source: {url} answered {what}, not a zip or tar archive; nothing was cached. "
                "Check the URL in a browser: it must download the archive itself"
            )
        write_json(_cache_record(cached), {"bytes": cached.stat().st_size, "sha256": sha256_file(cached)})
    try:
        _extract(cached, workdir)
    except FetchError:
        _drop_cached(cached)  # unreadable or unsafe: never reused
        raise


def _extract(path: Path, workdir: Path) -> None:
    try:
        archive.extract(path, workdir)
    except archive.UnsafeArchiveError as exc:
        raise FetchError(str(exc)) from None
    except OSError as exc:
        written = exc.filename is None or Path(os.fsdecode(exc.filename)).is_relative_to(workdir)
        if write_failure(exc) and written:
            raise  # disk full, read-only: the target's problem (core/files.py names it), not the archive's
        raise FetchError(f"{path}: cannot read archive ({exc})") from None
    except (EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"{path}: cannot read archive ({exc})") from None


def _check_names(root: Path, source: str) -> None:
    """Every name must be text: manifests, reports, MLflow and DVC all store names as UTF-8."""
    for path in root.rglob("*"):
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
            raise FetchError(
                f"data.source: {source} holds a file name that is not valid UTF-8: {shown}; rename it "
                "(e.g. `convmv -f latin1 -t utf8 -r --notest DIR`)"
            ) from None


def _remove_junk(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.name in JUNK_NAMES and (path.exists() or path.is_symlink()):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
