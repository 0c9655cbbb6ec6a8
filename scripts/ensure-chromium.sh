#!/usr/bin/env bash
# What the browser tests need to look at a page as a user would: headless Chromium for
# `dvc plots show`'s page (tests/test_pipeline_e2e.py) and the MLflow UI (tests/test_mlflow_ui.py),
# and the Vega scripts the plots page loads from a CDN, kept in .cache/vega/ so it renders
# without internet. Installs Debian's chromium package when it is missing and this runs as
# root with apt-get; fetches each script the page names, at the version it names, from the npm
# registry with `npm pack` when npm is there. Otherwise it says why not and exits 0: `make test`
# goes on, and the tests that lack something are skipped with that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
CACHE=.cache/vega

if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "ensure-chromium: chromium is not installed, and installing it needs root and apt-get;" \
             "the browser tests will be skipped. Install it with: sudo apt-get install chromium" >&2
    else
        echo "ensure-chromium: installing chromium with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        # A fresh machine may have no package lists yet: update only if the first try fails.
        if ! apt-get install -y -q chromium >/dev/null; then
            apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null \
                || echo "ensure-chromium: apt-get install chromium failed; the browser tests will be skipped" >&2
        fi
    fi
fi

# "vega@5.20.2" and the like, as DVC's page names them.
packages=$("$PYTHON" -c 'import re
from dvc_render.vega import VegaRenderer
print(" ".join(re.findall(r"/npm/([a-z-]+@[0-9.]+)", VegaRenderer.SCRIPTS)))')
for package in $packages; do
    [ -f "$CACHE/$package.js" ] && continue
    if ! command -v npm >/dev/null; then
        echo "ensure-chromium: npm is missing, so $package cannot be fetched; the plots render test will be skipped" >&2
        continue
    fi
    work=$(mktemp -d)
    if (cd "$work" && npm pack --silent "$package" >/dev/null 2>&1 && tar xzf ./*.tgz); then
        # The file the CDN serves for a bare package name: package.json's "jsdelivr" (or "unpkg") field.
        file=$("$PYTHON" -c 'import json, sys
found = json.load(open(sys.argv[1]))
print(found.get("jsdelivr") or found["unpkg"])' "$work/package/package.json")
        mkdir -p "$CACHE" && cp "$work/package/$file" "$CACHE/$package.js.tmp" && mv "$CACHE/$package.js.tmp" "$CACHE/$package.js"
    else
        echo "ensure-chromium: npm pack $package failed; the plots render test will be skipped" >&2
    fi
    rm -rf "$work"
done
