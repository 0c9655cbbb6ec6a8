"""HTTP(S) download with a progress bar, retries, resume of a partial file and a timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests
from tqdm import tqdm

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK_BYTES = 1 << 16


class DownloadError(RuntimeError):
    """The URL could not be downloaded after all retries, or the server refused it."""


class _Retryable(Exception):
    pass


def download(url: str, dest: Path, *, retries: int = 4, timeout: float = 30.0, backoff: float = 0.5) -> Path:
    """Download ``url`` to ``dest``; a ``dest.part`` left by a cut transfer is resumed.

    ``dest`` appears only once the transfer is complete, so a reader never sees a
    partial file under the final name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _transfer(url, part, timeout)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Retryable,
        ) as exc:
            last_error = exc
            if attempt < retries:
                time.sleep(backoff * 2 ** (attempt - 1))
            continue
        os.replace(part, dest)
        return dest
    raise DownloadError(f"{url}: {_reason(last_error)} (gave up after {retries} attempts)")


def _transfer(url: str, part: Path, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:
            # Our partial file is not a prefix the server recognises: start over.
            part.unlink()
            raise _Retryable("server rejected the resume range")
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
        resumed = response.status_code == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            part.open("ab" if resumed else "wb") as handle,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {part.stem}"
            ) as bar,
        ):
            for chunk in response.iter_content(CHUNK_BYTES):
                handle.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise _Retryable(f"connection closed after {part.stat().st_size} of {total} bytes")


def _reason(error: Exception | None) -> str:
    if isinstance(error, requests.ConnectionError):
        return "cannot connect (offline, or the host is unreachable)"
    if isinstance(error, requests.Timeout):
        return "timed out"
    return str(error) or type(error).__name__
