"""Peak memory and time of the split stage at several dataset sizes: the memory must not grow with them.

    python bench/split_memory.py [--pairs 1000 3000] [--photo-size 1000] [--image-size 320]

Generated pairs: a JPEG photo of --photo-size x --photo-size px (a smooth colour field, as
photos are, rather than noise JPEG cannot compress) and a PNG mask with one rectangle. The
first N pairs are the dataset of N pairs, so a larger one holds the smaller ones. Each size is
split by the split stage's own code (``build_split``, params.yaml's data and split sections,
``data.image_size`` from --image-size) in a fresh process of this invocation, so that its peak
resident memory is its own.

A first line gives the peak of a process that only imports what the split needs and loads the
config. Each line then: pairs, seconds, pairs/s, peak RSS, that peak less the set-up's (the
split's own memory), and the peak over the smallest size's. The last
line is ``peak_rss_largest_vs_smallest: X.XX`` (1.00 when memory does not grow with the pairs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

# Run as a script: the project root, not bench/, must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TQDM_DISABLE", "1")  # the split's progress bar would interleave with the table


def _generate(raw: Path, count: int, photo_size: int) -> None:
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (raw / folder).mkdir(parents=True)
    for index in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        photo = cv2.resize(small, (photo_size, photo_size), interpolation=cv2.INTER_CUBIC)
        mask = np.zeros((photo_size, photo_size), np.uint8)
        top, left = rng.integers(0, photo_size // 2, 2)
        mask[top : top + photo_size // 3, left : left + photo_size // 3] = 255
        cv2.imwrite(str(raw / "images" / f"{index:05d}.jpg"), photo)
        cv2.imwrite(str(raw / "masks" / f"{index:05d}.png"), mask)


def _subset(raw: Path, target: Path, count: int) -> None:
    """The first ``count`` pairs of ``raw``, as hard links: no copy of the files."""
    for folder in ("images", "masks"):
        (target / folder).mkdir(parents=True)
        for path in sorted((raw / folder).iterdir())[:count]:
            os.link(path, target / folder / path.name)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_up_only() -> float:
    """The peak resident memory (MiB) of a process that imports what a split needs and loads the
    config, as ``split_once`` does, and splits nothing."""
    from pipeline.core.config import load_config
    from pipeline.split.preparation import build_split  # noqa: F401

    load_config()
    return _peak_mib()


def split_once(raw: Path, out: Path, image_size: int) -> tuple[float, float]:
    """Seconds of one split of ``raw`` and this process's peak resident memory (MiB)."""
    from pipeline.core.config import load_config
    from pipeline.split.preparation import build_split

    cfg = load_config()
    data = cfg.data.model_copy(update={"layout": "auto", "image_size": image_size})
    started = time.perf_counter()
    build_split(raw, out / "split", out / "report.json", data, cfg.split)
    return time.perf_counter() - started, _peak_mib()


def _fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1000, 3000], help="dataset sizes, in pairs")
    parser.add_argument("--photo-size", type=int, default=1000, help="side of the generated photos, in px")
    parser.add_argument("--image-size", type=int, default=320, help="data.image_size, a multiple of 32")
    args = parser.parse_args()

    counts = sorted(set(args.pairs))
    with tempfile.TemporaryDirectory(prefix="bench-split-") as tmp:
        workdir = Path(tmp)
        _generate(workdir / "all", counts[-1], args.photo_size)
        print(f"bench: split of {args.photo_size} px photos to {args.image_size} px, {os.cpu_count()} CPUs")
        floor = _fresh_process(set_up_only)
        print(f"imports and config alone: peak RSS {floor:.0f} MiB")
        print(f"{'pairs':>7} {'seconds':>8} {'pairs/s':>8} {'peak RSS':>10} {'over set-up':>12} {'vs smallest':>12}")
        peaks = {}
        for count in counts:
            raw = workdir / f"raw-{count}"
            _subset(workdir / "all", raw, count)
            seconds, peaks[count] = _fresh_process(split_once, raw, workdir / f"out-{count}", args.image_size)
            ratio = peaks[count] / peaks[counts[0]]
            print(
                f"{count:>7} {seconds:>8.1f} {count / seconds:>8.1f} {peaks[count]:>6.0f} MiB "
                f"{peaks[count] - floor:>8.0f} MiB {ratio:>12.2f}"
            )
    print(f"peak_rss_largest_vs_smallest: {peaks[counts[-1]] / peaks[counts[0]]:.2f}")


if __name__ == "__main__":
    main()
