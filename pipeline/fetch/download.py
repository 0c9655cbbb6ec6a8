"""HTTP(S) download with a progress bar, retries, resume of a partial file, and three time limits.

- connect timeout: the server must accept the connection within ``timeout`` seconds;
- read timeout: once connected, no wait for the next bytes may last more than ``timeout`` seconds;
- deadline: the whole download, every attempt and pause included, must finish within
  ``deadline`` seconds (default DEFAULT_DEADLINE_S, or the environment variable
  PIPELINE_DOWNLOAD_DEADLINE_S), so a server that trickles a byte every few seconds fails too.

Each failure says which limit was hit. A write failure (disk full, read-only folder) is a
StorageError naming the partial file.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import requests
import urllib3.exceptions
from tqdm import tqdm

from ..core.errors import storage_error, write_failure

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK_BYTES = 1 << 16
DEADLINE_ENV = "PIPELINE_DOWNLOAD_DEADLINE_S"
DEFAULT_DEADLINE_S = 3600.0  # the reference dataset takes seconds; 64 GiB at 20 MB/s, under an hour


class DownloadError(RuntimeError):
    """The URL could not be downloaded after all retries, or the server refused it."""


class _Retryable(Exception):
    pass


class _DeadlinePassed(Exception):
    pass


def download_deadline() -> float:
    """Seconds a whole download may take: PIPELINE_DOWNLOAD_DEADLINE_S, or DEFAULT_DEADLINE_S."""
    value = os.environ.get(DEADLINE_ENV, "").strip()
    if not value:
        return DEFAULT_DEADLINE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise DownloadError(f"{DEADLINE_ENV}={value!r}: write the download's time limit as a number of seconds above 0")
    return seconds


def download(
    url: str,
    dest: Path,
    *,
    retries: int = 4,
    timeout: float = 30.0,
    backoff: float = 0.5,
    deadline: float | None = None,
) -> Path:
    """Download ``url`` to ``dest``; a ``dest.part`` left by a cut transfer is resumed.

    ``dest`` appears only once the transfer is complete, so a reader never sees a
    partial file under the final name. ``timeout`` is the connect and the read timeout,
    ``deadline`` (default: download_deadline()) the limit on the whole download.
    """
    dest = Path(dest)
    limit = download_deadline() if deadline is None else deadline
    ends = time.monotonic() + limit
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if write_failure(exc):
            raise storage_error(exc, dest) from None
        raise
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _transfer(url, part, timeout, ends)
        except _DeadlinePassed:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"{url}: not complete within the download deadline of {limit:g} s ({have:,} bytes received, "
                f"kept in {part} to resume); the server is too slow. Raise the limit with {DEADLINE_ENV}=SECONDS"
            ) from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Retryable,
        ) as exc:
            last_error = exc
            if attempt < retries:
                pause = backoff * 2 ** (attempt - 1)
                if time.monotonic() + pause >= ends:
                    break
                time.sleep(pause)
            continue
        except OSError as exc:
            if write_failure(exc):
                have = part.stat().st_size if part.exists() else 0
                error = storage_error(exc, dest)
                raise type(error)(f"{error} (the {have:,} bytes downloaded so far are kept in {part})") from None
            raise
        os.replace(part, dest)
        return dest
    raise DownloadError(f"{url}: {_reason(last_error, timeout)} (gave up after {attempt} attempts)")


def _transfer(url: str, part: Path, timeout: float, ends: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if time.monotonic() >= ends:
        raise _DeadlinePassed
    # The connect and read timeouts never reach past the deadline.
    wait = max(0.01, min(timeout, ends - time.monotonic()))
    with requests.get(url, headers=headers, stream=True, timeout=(wait, wait)) as response:
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
        total = offset + int(length) if length is not None and length.isdigit() else None
        with (
            part.open("ab" if resumed else "wb") as handle,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {part.stem}"
            ) as bar,
        ):
            # read1 returns what one read of the socket brings (never waits to fill a chunk), so the
            # deadline is checked however slowly the bytes come.
            while True:
                if time.monotonic() >= ends:
                    raise _DeadlinePassed
                _read_timeout(response, min(timeout, max(0.01, ends - time.monotonic())))
                try:
                    chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
                except urllib3.exceptions.ReadTimeoutError:
                    if time.monotonic() >= ends:
                        raise _DeadlinePassed from None
                    raise requests.ReadTimeout("read timeout") from None
                except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as exc:
                    raise _Retryable(f"connection broken after {offset + bar.n:,} bytes ({exc})") from None
                if not chunk:
                    break
                handle.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise _Retryable(f"connection closed after {part.stat().st_size:,} of {total:,} bytes")


def _read_timeout(response: requests.Response, seconds: float) -> None:
    """Shorten the socket's read timeout so that a silent server is noticed by the deadline."""
    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _reason(error: Exception | None, timeout: float) -> str:
    if isinstance(error, requests.ConnectTimeout):
        return f"cannot connect: no answer to the connection within {timeout:g} s (connect timeout)"
    if isinstance(error, requests.ReadTimeout):
        return f"connected, but the server sent nothing for {timeout:g} s (read timeout)"
    if isinstance(error, requests.ConnectionError):
        return "cannot connect (offline, or the host is unreachable)"
    if isinstance(error, requests.Timeout):
        return "timed out"
    return str(error) or type(error).__name__
