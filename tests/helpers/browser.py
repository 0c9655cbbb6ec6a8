"""Headless Chromium for looking at a page as a user would: `dvc plots show`'s page, the MLflow UI
(scripts/ensure-chromium.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tests.helpers.project import PROJECT_ROOT

VEGA_CACHE = PROJECT_ROOT / ".cache" / "vega"
CDN_SCRIPT = re.compile(r'src="https://cdn\.jsdelivr\.net/npm/([a-z-]+@[0-9.]+)"')
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # A frame at every step of virtual time: without frames no IntersectionObserver fires, and
    # MLflow's UI draws a chart only once the observer reports it in view.
    "--run-all-compositor-stages-before-draw",
)
# Scripts run in virtual time: the page has rendered when it is used up, however slow the machine.
VIRTUAL_TIME_MS = 20_000


def missing() -> str | None:
    """Why the page cannot be rendered here, or None."""
    if shutil.which("chromium") is None:
        return "chromium is not installed (`make test` installs it: scripts/ensure-chromium.sh)"
    return None


def offline_page(index: Path) -> Path:
    """The page with its CDN scripts swapped for the copies in .cache/vega/ (the machine may be offline)."""
    html = index.read_text(encoding="utf-8")
    for package in CDN_SCRIPT.findall(html):
        if not (VEGA_CACHE / f"{package}.js").exists():
            raise FileNotFoundError(f"{VEGA_CACHE / package}.js (scripts/ensure-chromium.sh fetches it)")
    local = index.with_name("offline.html")
    local.write_text(CDN_SCRIPT.sub(lambda m: f'src="{(VEGA_CACHE / m[1]).as_uri()}.js"', html), encoding="utf-8")
    return local


def render(url: str, profile: Path, screenshot: Path, window: tuple[int, int] = (1400, 3000)) -> str:
    """The page's DOM after its scripts ran; also saves a screenshot of the window (``window``: width, height)."""

    def chromium(name: str, *action: str) -> subprocess.CompletedProcess:
        command = [
            "chromium",
            *FLAGS,
            f"--user-data-dir={profile / name}",  # a fresh profile each time: a first visit
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--allow-file-access-from-files",
            f"--window-size={window[0]},{window[1]}",
            *action,
            url,
        ]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=180)

    chromium("screenshot", f"--screenshot={screenshot}")
    return chromium("dom", "--dump-dom").stdout


@dataclass(frozen=True)
class Element:
    tag: str
    attrs: dict[str, str]


class _StartTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append(Element(tag, {key: value or "" for key, value in attrs}))


def elements(dom: str) -> list[Element]:
    """A rendered page's elements in document order, each with its attributes."""
    parser = _StartTags()
    parser.feed(dom)
    parser.close()
    return parser.found
