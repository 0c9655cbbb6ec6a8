"""Hostile and broken input to the fetch stage, and full or read-only disks in fetch and split.

Every failure is one line naming the file at fault and what to do; nothing half-written stays,
and nothing that is not a readable archive is ever cached.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import requests

from pipeline.core import files, stage
from pipeline.core.errors import FetchError, StorageError
from pipeline.core.splits import StagedRows
from pipeline.fetch import download as download_module
from pipeline.fetch.dataset import fetch_dataset
from pipeline.fetch.download import DEADLINE_ENV, DownloadError, download
from tests.helpers.datasets import build_test_split, make_dataset
from tests.helpers.httpserver import FileServer
from tests.helpers.project import PROJECT_ROOT, load_params, write_params

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>\n"


def fetch(source: Path | str, tmp_path: Path) -> Path:
    return fetch_dataset(str(source), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)


def dataset_files(tmp_path: Path, count: int = 2) -> list[tuple[str, bytes]]:
    root = make_dataset(tmp_path / "made", count=count, size=16)
    return [(path.relative_to(root).as_posix(), path.read_bytes()) for path in sorted(root.rglob("*.*"))]


def zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name, data in entries:
            out.writestr(name, data)
    return buffer.getvalue()


def tar_gz_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as out:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def names(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def siblings(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- recognised by content, never cached unless readable --------------------------------------


def test_an_html_page_answered_with_200_is_refused_and_not_cached(tmp_path: Path):
    entries = dataset_files(tmp_path)
    with FileServer() as server:
        route = server.add("/data.zip", HTML)
        with pytest.raises(FetchError) as caught:
            fetch(server.url("/data.zip"), tmp_path)
        message = str(caught.value)
        assert "\n" not in message
        assert "answered an HTML page" in message and "nothing was cached" in message
        assert siblings(tmp_path / "cache") == []  # neither the page nor a record nor a .part
        assert not (tmp_path / "raw").exists()
        # The next run asks the server again, and gets the dataset this time.
        route.body = zip_bytes(entries)
        raw = fetch(server.url("/data.zip"), tmp_path)
    assert len(route.requests) == 2
    assert names(raw) == [name for name, _ in entries]


def test_a_cached_page_from_before_is_dropped_and_downloaded_again(tmp_path: Path, capsys):
    """A cache entry that is not an archive (an older version cached it, with its record) is never reused."""
    entries = dataset_files(tmp_path)
    with FileServer() as server:
        route = server.add("/data.zip", zip_bytes(entries))
        fetch(server.url("/data.zip"), tmp_path)
        (cached,) = (tmp_path / "cache").glob("*-data.zip")
        cached.write_bytes(HTML)
        files.write_json(
            cached.with_name(cached.name + ".json"), {"bytes": len(HTML), "sha256": files.sha256_file(cached)}
        )
        raw = fetch(server.url("/data.zip"), tmp_path)
    assert len(route.requests) == 2
    assert "is not an archive; downloading again" in capsys.readouterr().out
    assert names(raw) == [name for name, _ in entries]
    assert cached.read_bytes()[:2] == b"PK"


def test_a_zip_at_a_url_without_a_suffix_is_read_as_a_zip(tmp_path: Path):
    entries = dataset_files(tmp_path)
    with FileServer() as server:
        server.add("/download?id=1", zip_bytes(entries))
        raw = fetch(server.url("/download?id=1"), tmp_path)
    assert names(raw) == [name for name, _ in entries]


@pytest.mark.parametrize(
    ("name", "pack"), [("data.tar.gz", zip_bytes), ("data.zip", tar_gz_bytes), ("data", zip_bytes)]
)
def test_archives_are_read_by_content_whatever_their_name(tmp_path: Path, name: str, pack):
    entries = dataset_files(tmp_path)
    source = tmp_path / name
    source.write_bytes(pack(entries))
    assert names(fetch(source, tmp_path)) == [entry for entry, _ in entries]


def test_a_local_file_that_is_no_archive_says_what_it_is(tmp_path: Path):
    source = tmp_path / "data.zip"
    source.write_bytes(HTML)
    with pytest.raises(FetchError) as caught:
        fetch(source, tmp_path)
    assert str(caught.value) == (
        f"data.source: {source} is neither a folder nor a zip or tar archive: "
        "an HTML page (a login, error or download-confirmation page?)"
    )
    assert not (tmp_path / "raw").exists()


def test_a_truncated_zip_download_is_refused_and_not_cached(tmp_path: Path):
    body = zip_bytes(dataset_files(tmp_path))
    with FileServer() as server:
        server.add("/data.zip", body[: len(body) // 2])  # a zip's start, its directory missing
        with pytest.raises(FetchError, match="cannot read archive"):
            fetch(server.url("/data.zip"), tmp_path)
    assert siblings(tmp_path / "cache") == []
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("pack", [zip_bytes, tar_gz_bytes])
def test_duplicate_entry_names_are_refused_naming_the_entry(tmp_path: Path, pack):
    entries = dataset_files(tmp_path)
    duplicate = entries[0][0]
    source = tmp_path / "data.bin"
    with pytest.warns(UserWarning, match="Duplicate name") if pack is zip_bytes else contextlib.nullcontext():
        source.write_bytes(pack([*entries, (duplicate, b"other content")]))
    raw = fetch(make_dataset(tmp_path / "old", count=1, size=16), tmp_path)
    before = names(raw)
    with pytest.raises(FetchError) as caught:
        fetch(source, tmp_path)
    assert f"entry {duplicate!r} appears more than once" in str(caught.value)
    assert names(raw) == before  # the previous data/raw is untouched
    assert not [name for name in siblings(tmp_path) if name.startswith(".raw")]


# --- time limits ------------------------------------------------------------------------------


def slow_server(pause: float, *, first: bytes = b"P") -> tuple[str, socket.socket]:
    """A server that sends the headers of a 1 MB file, then one byte every ``pause`` seconds."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(connection,), daemon=True).start()

    def trickle(connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                for _ in range(1000):
                    time.sleep(pause)
                    connection.sendall(first)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/data.zip", listener


def test_a_trickling_server_fails_at_the_deadline_naming_it(tmp_path: Path, monkeypatch):
    """One byte every 0.1 s never trips the read timeout; the overall deadline stops it."""
    monkeypatch.setenv(DEADLINE_ENV, "1.5")
    url, listener = slow_server(0.1)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as caught:
            fetch(url, tmp_path)
    finally:
        listener.close()
    elapsed = time.monotonic() - started
    message = str(caught.value).splitlines()[0]
    assert 1.5 <= elapsed < 6, elapsed
    assert "not complete within the download deadline of 1.5 s" in message
    assert f"Raise the limit with {DEADLINE_ENV}=SECONDS" in message
    assert "cannot connect" not in message
    # Only the partial file (for resuming) is in the cache: nothing under the final name.
    assert [path.suffix for path in (tmp_path / "cache").iterdir()] == [".part"]
    assert not (tmp_path / "raw").exists()


def test_a_silent_server_is_a_read_timeout_not_cannot_connect(tmp_path: Path):
    url, listener = slow_server(60)
    try:
        with pytest.raises(DownloadError) as caught:
            download(url, tmp_path / "f.zip", retries=2, timeout=0.3, backoff=0, deadline=30)
    finally:
        listener.close()
    message = str(caught.value)
    assert "the server sent nothing for 0.3 s (read timeout)" in message and "(gave up after 2 attempts)" in message
    assert "cannot connect" not in message


def test_a_connection_not_accepted_in_time_is_a_connect_timeout(tmp_path: Path, monkeypatch):
    """A host that drops the connection attempt (a firewall) cannot be imitated on the loopback: requests' own error."""

    def unanswered(url: str, **kwargs: object) -> None:
        raise requests.ConnectTimeout(f"connection to {url} timed out")

    monkeypatch.setattr(download_module.requests, "get", unanswered)
    with pytest.raises(DownloadError) as caught:
        download("http://192.0.2.1/f.zip", tmp_path / "f.zip", retries=2, timeout=0.3, backoff=0)
    assert str(caught.value) == (
        "http://192.0.2.1/f.zip: cannot connect: no answer to the connection within 0.3 s (connect timeout) "
        "(gave up after 2 attempts)"
    )


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_a_malformed_deadline_is_named(tmp_path: Path, monkeypatch, value: str):
    monkeypatch.setenv(DEADLINE_ENV, value)
    with pytest.raises(DownloadError, match=f"{DEADLINE_ENV}='{value}': write the download's time limit"):
        download("http://127.0.0.1:9/f", tmp_path / "f")


# --- leftovers of an interrupted swap ---------------------------------------------------------


def test_leftovers_of_an_interrupted_swap_are_removed_at_start_and_nothing_else(tmp_path: Path, capsys):
    raw = make_dataset(tmp_path / "raw", count=1, size=16)
    gone = dead_pid()
    leftovers = [tmp_path / f".raw.old-{gone}", tmp_path / f".raw.tmp-{gone}.ab12_cd3.tmp"]
    for leftover in leftovers:
        (leftover / "images").mkdir(parents=True)
        (leftover / "images" / "x.jpg").write_bytes(b"old")
    running = tmp_path / f".raw.old-{os.getppid()}"  # a live process's swap in progress
    running.mkdir()
    users = [tmp_path / ".raw.old-notes", tmp_path / "raw.old-123", tmp_path / f".raw.old-{gone}.txt"]
    for path in users:
        path.write_text("mine")
    fetch(make_dataset(tmp_path / "new", count=2, size=16), tmp_path)
    assert not any(leftover.exists() for leftover in leftovers)
    assert running.is_dir() and all(path.read_text() == "mine" for path in users)
    assert f"removed .raw.old-{gone}, left by an interrupted run" in capsys.readouterr().out
    assert names(raw) == ["images/000.jpg", "images/001.jpg", "masks/000.png", "masks/001.png"]


def test_killed_between_the_two_renames_the_old_folder_is_put_back(tmp_path: Path):
    old = tmp_path / f".raw.old-{dead_pid()}"
    make_dataset(old, count=1, size=16)
    files.remove_leftovers(tmp_path / "raw")
    assert names(tmp_path / "raw") == ["images/000.jpg", "masks/000.png"] and not old.exists()


def test_ctrl_c_between_the_two_renames_keeps_the_old_folder(tmp_path: Path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", count=1, size=16)
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old moved aside, new not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(make_dataset(tmp_path / "new", count=3, size=16), tmp_path)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert names(raw) == ["images/000.jpg", "masks/000.png"]
    assert not [name for name in siblings(tmp_path) if name.startswith(".raw")]


# --- full disk, read-only folder --------------------------------------------------------------


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_extracting_is_one_line_keeps_the_old_data_and_the_download(tmp_path: Path, monkeypatch):
    entries = dataset_files(tmp_path)
    raw = fetch(make_dataset(tmp_path / "old", count=1, size=16), tmp_path)
    with FileServer() as server:
        route = server.add("/data.zip", zip_bytes(entries))
        monkeypatch.setattr(zipfile.shutil, "copyfileobj", no_space)  # zipfile writes each entry with it
        with pytest.raises(StorageError) as caught:
            fetch(server.url("/data.zip"), tmp_path)
        monkeypatch.undo()
        message = str(caught.value)
        assert message.startswith(f"cannot write {raw}: no space left on the device (")
        assert f"bytes free on the disk of {tmp_path}); free some space there and run again" in message
        assert "\n" not in message
        assert names(raw) == ["images/000.jpg", "masks/000.png"]
        assert not [name for name in siblings(tmp_path) if name.startswith(".raw")]
        # The download itself was fine: it stays cached and is used once there is room.
        assert len(list((tmp_path / "cache").glob("*-data.zip"))) == 1
        assert names(fetch(server.url("/data.zip"), tmp_path)) == [name for name, _ in entries]
    assert len(route.requests) == 1


def test_disk_full_while_downloading_names_the_file_and_keeps_the_partial_one(tmp_path: Path, monkeypatch):
    real_open = Path.open

    def open_part(self: Path, mode: str = "r", *args: object, **kwargs: object):
        handle = real_open(self, mode, *args, **kwargs)
        if self.name.endswith(".part"):
            handle.write = no_space  # type: ignore[method-assign]
        return handle

    with FileServer() as server:
        server.add("/data.zip", zip_bytes(dataset_files(tmp_path)))
        monkeypatch.setattr(Path, "open", open_part)
        with pytest.raises(StorageError) as caught:
            fetch(server.url("/data.zip"), tmp_path)
    (cached,) = [path for path in (tmp_path / "cache").iterdir() if path.suffix == ".part"]
    message = str(caught.value)
    assert message.startswith(f"cannot write {cached.with_suffix('')}: no space left on the device")
    assert f"kept in {cached})" in message and "\n" not in message
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("code", "says"),
    [(errno.EROFS, "is on a read-only file system; remount it writable"), (errno.EACCES, "permission denied in")],
)
def test_read_only_data_folder_in_fetch_is_one_line_naming_it(tmp_path: Path, monkeypatch, code: int, says: str):
    data = tmp_path / "data"
    data.mkdir()

    def refuse(dir: str, prefix: str, suffix: str) -> str:
        raise OSError(code, os.strerror(code), os.path.join(dir, prefix + "x" + suffix))

    monkeypatch.setattr(files.tempfile, "mkdtemp", refuse)
    with pytest.raises(StorageError) as caught:
        fetch_dataset("synthetic:2", data / "raw", manifest=None, cache_dir=data / "downloads", classes=2)
    assert str(caught.value).startswith(f"cannot write {data / 'raw'}: ")
    assert says in str(caught.value) and str(data) in str(caught.value).split(": ", 1)[1]
    assert siblings(data) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_data_folder_in_fetch(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        with pytest.raises(StorageError, match=f"cannot write {data / 'raw'}: permission denied in {data}"):
            fetch_dataset("synthetic:2", data / "raw", manifest=None, cache_dir=data / "downloads", classes=2)
    finally:
        data.chmod(0o755)


def test_disk_full_in_split_keeps_the_previous_split_and_names_the_file(tmp_path: Path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", count=10, size=32)
    split = build_test_split(raw, tmp_path, 32, 0.2, 0.2)
    before = {p.relative_to(split): p.read_bytes() for p in split.rglob("*") if p.is_file()}
    monkeypatch.setattr(StagedRows, "copy", no_space)
    with pytest.raises(StorageError) as caught:
        build_test_split(raw, tmp_path, 32, 0.2, 0.2)
    message = str(caught.value)
    assert message.startswith(f"cannot write {split / 'train' / 'images.npy'}: no space left on the device (")
    assert f"bytes free on the disk of {split / 'train'}); free some space" in message and ".tmp" not in message
    assert {p.relative_to(split): p.read_bytes() for p in split.rglob("*") if p.is_file()} == before
    assert not [name for name in siblings(tmp_path) if name.startswith(".split")]


def test_disk_full_while_staging_the_resized_pairs_keeps_the_previous_split(tmp_path: Path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", count=10, size=32)
    split = build_test_split(raw, tmp_path, 32, 0.2, 0.2)
    before = {p.relative_to(split): p.read_bytes() for p in split.rglob("*") if p.is_file()}
    monkeypatch.setattr(StagedRows, "append", no_space)
    with pytest.raises(StorageError, match=f"^cannot write {split}: no space left on the device"):
        build_test_split(raw, tmp_path, 32, 0.2, 0.2)
    assert {p.relative_to(split): p.read_bytes() for p in split.rglob("*") if p.is_file()} == before
    assert not [name for name in siblings(tmp_path) if name.startswith(".split")]


def test_read_only_data_folder_in_split_is_one_line(tmp_path: Path, monkeypatch):
    raw = make_dataset(tmp_path / "raw", count=10, size=32)

    def read_only(dir: str, prefix: str, suffix: str) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, prefix + "x" + suffix))

    monkeypatch.setattr(files.tempfile, "mkdtemp", read_only)
    with pytest.raises(StorageError) as caught:
        build_test_split(raw, tmp_path, 32, 0.2, 0.2)
    assert str(caught.value) == (
        f"cannot write {tmp_path / 'split'}: {tmp_path} is on a read-only file system; remount it writable "
        "or run the pipeline in a writable copy of the project"
    )
    assert not (tmp_path / "split").exists() and not (tmp_path / "report.json").exists()


# --- stages: one line, exit code, no traceback ------------------------------------------------


def test_an_os_write_error_anywhere_in_a_stage_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["stage"])

    def main() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "models/best.pt")

    with pytest.raises(SystemExit) as caught:
        stage.run_stage("train", main, "doc")
    assert caught.value.code == stage.EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("train: error: cannot write models/best.pt: no space left on the device (")


def test_any_other_os_error_in_a_stage_is_a_bug_and_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stage"])

    def main() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):
        stage.run_stage("train", main, "doc")


@pytest.mark.process
def test_fetch_stage_into_a_read_only_data_folder_exits_2_with_one_line(tmp_path: Path):
    params = load_params()
    params["data"].update(source="synthetic:2", manifest=None, classes=["background", "shape"])
    params["model"].update(encoder="resnet18", encoder_weights=None)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    write_params(project / "params.yaml", params)
    # The data folder is on a read-only file system (injected: root may write anywhere).
    script = (
        "import errno, os, runpy, tempfile\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(kwargs['dir'], 'x'))\n"
        "tempfile.mkdtemp = refuse\n"
        f"runpy.run_path({str(PROJECT_ROOT / 'stages' / 'fetch.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "fetch: error: cannot write data/raw: data is on a read-only file system; "
        "remount it writable or run the pipeline in a writable copy of the project"
    ]
    assert os.listdir(project / "data") == []


def test_the_download_module_has_a_finite_default_deadline(monkeypatch):
    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    assert 0 < download_module.download_deadline() == download_module.DEFAULT_DEADLINE_S < 24 * 3600
    monkeypatch.setenv(DEADLINE_ENV, "12.5")
    assert download_module.download_deadline() == 12.5
