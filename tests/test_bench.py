"""The benchmark must keep running as the library changes (its numbers are not checked here)."""

import re
import shutil
import subprocess
import sys

from tests.helpers.datasets import make_dataset
from tests.helpers.project import PROJECT_ROOT


def test_train_speed_bench_runs_both_loops_and_prints_the_speedup_line(tmp_path):
    # An archive, as `make bench` is pointed at by hand: exercises the fetch path too.
    source = shutil.make_archive(str(tmp_path / "data"), "zip", make_dataset(tmp_path / "data", count=24, size=48))
    result = subprocess.run(
        [
            sys.executable,
            "bench/train_speed.py",
            "--source",
            source,
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.num_workers=0",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_notebook_loop: \d+\.\d\d", lines[-1])
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("notebook_loop ", "pipeline "))}
    assert set(rows) == {"notebook_loop", "pipeline"}
    assert all(float(row[1]) > 0 for row in rows.values())  # images/s
