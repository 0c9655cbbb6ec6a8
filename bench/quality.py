"""Model quality per configuration: the whole pipeline (`dvc repro`), per seed, in scratch copies.

    python bench/quality.py --source ~/data/human-seg.zip --seeds 42 43 44 \\
        --config "scratch: model.encoder_weights=null" \\
        --config "lite0: model.encoder=tu-tf_efficientnet_lite0, \\
                  model.encoder_weights=$PWD/weights/tf_efficientnet_lite0.safetensors"

Each (configuration, seed) runs all four stages from nothing in a fresh copy of the project
(tracked and unignored files, as a clone holds them, plus uncommitted edits) with its own
DVC cache and MLflow store, so runs cannot reuse each other's outputs. A configuration is a
name, optionally followed by `:` and comma-separated `KEY=VALUE` params overrides (values
read as YAML, as `dvc exp run -S` does); `--set` overrides apply to every configuration;
the seed is `train.seed` (the split stays the same, so every run is scored on the same test
photos). Paths in overrides are used as given: pass absolute paths, the copies live
elsewhere. Each run copies the project when it starts: run the bench from a checkout you
leave alone while it works (hours at full size on a CPU). --logs keeps each run's `dvc
repro` output, written as it runs.

The table lists every run in the order it ran (test Dice, val Dice at the best epoch, best
epoch, wall time for all four stages), per configuration, test Dice mean ± standard
deviation over its seeds, and each configuration's test Dice minus the first one's, seed by
seed (mean ± sd of those paired differences, and their range); it names the machine and the
commit, and is rewritten after each run (--output), so an interrupted session keeps what
finished. Beside the table, --output keeps the finished runs as JSON (`quality.md` ->
`quality.json`); `--resume` reads them back and skips every (configuration, seed) already
measured with exactly the same params, so a table over many seeds can be built up over
several sittings. Each row names the commit it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ruamel.yaml import YAML

from pipeline.core.files import read_json, write_json, write_text

PROJECT = Path(__file__).resolve().parents[1]
# scripts/ is a folder of scripts, not a package: its copy helper is shared with `make demo`.
sys.path.insert(0, str(PROJECT / "scripts"))
from project_copy import copy_tracked_files  # noqa: E402


@dataclass
class Run:
    config: str
    seed: int
    test_dice: float | None
    val_dice: float | None
    best_epoch: int | None
    wall_s: float
    error: str = ""
    commit: str = ""
    params: dict = field(default_factory=dict, repr=False)


def parse_overrides(text: str) -> dict[str, object]:
    overrides = {}
    for assignment in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = assignment.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"bench: override {assignment!r} is not SECTION.KEY=VALUE")
        overrides[key.strip()] = YAML(typ="safe", pure=True).load(value.strip())
    return overrides


def parse_config(text: str) -> tuple[str, dict[str, object]]:
    name, _, overrides = text.partition(":")
    return name.strip(), parse_overrides(overrides)


def apply(params: dict, overrides: dict[str, object]) -> None:
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in params or name not in params[section]:
            raise SystemExit(f"bench: params.yaml has no key {key!r}")
        params[section][name] = value


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " (with uncommitted edits)" if git("status", "--porcelain") else ""
    )


def run_pipeline(name: str, seed: int, params: dict, keep: Path | None) -> Run:
    # Named before the run: the copy is taken at its start, the checkout may move meanwhile.
    revision = commit()
    run = measure(name, seed, params, keep)
    run.commit, run.params = revision, params
    return run


def measure(name: str, seed: int, params: dict, keep: Path | None) -> Run:
    with tempfile.TemporaryDirectory(prefix=f"quality-{name}-{seed}-") as scratch:
        project = Path(scratch) / "project"
        project.mkdir()
        copy_tracked_files(PROJECT, project)
        yaml = YAML()
        with (project / "params.yaml").open("w") as handle:
            yaml.dump(params, handle)
        # A git repository of its own: DVC needs one, and the run's tags name its commit.
        for args in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "copy"],
        ):
            subprocess.run(["git", *args], cwd=project, check=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        env["PYTHONPATH"] = str(project)
        # Streamed to a file as it runs: `tail -f` it to follow a run that takes an hour.
        log = (keep or Path(scratch)) / f"{name}-seed{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log.open("w") as output:
            result = subprocess.run(["dvc", "repro"], cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            # The last line that is not a progress bar: DVC's or the stage's one-line error.
            text = log.read_text().replace("\r", "\n")
            lines = [line for line in text.splitlines() if line.strip() and "%|" not in line]
            return Run(name, seed, None, None, None, wall, lines[-1] if lines else f"exit {result.returncode}")
        evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
        training = json.loads((project / "metrics" / "train.json").read_text())
        return Run(name, seed, evaluation["test_dice"], training["val_dice_at_best"], training["best_epoch"], wall)


def table(runs: list[Run], header: str) -> str:
    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        header,
        "",
        "| # | configuration | seed | test Dice | val Dice | best epoch | wall (min) | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, run in enumerate(runs, 1):
        epoch = "-" if run.best_epoch is None else str(run.best_epoch)
        failed = f" (failed: {run.error})" if run.error else ""
        lines.append(
            f"| {index} | {run.config}{failed} | {run.seed} | {score(run.test_dice)} | {score(run.val_dice)} "
            f"| {epoch} | {run.wall_s / 60:.1f} | {run.commit or '-'} |"
        )
    lines += [
        "",
        "| configuration | seeds | test Dice mean ± sd | val Dice mean | wall mean (min) |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(run.config for run in runs):
        done = [run for run in runs if run.config == name and not run.error]
        if not done:
            continue
        tests = [run.test_dice for run in done]
        spread = f" ± {statistics.stdev(tests):.4f}" if len(tests) > 1 else " (one seed)"
        lines.append(
            f"| {name} | {len(done)} | {statistics.mean(tests):.4f}{spread} "
            f"| {statistics.mean(run.val_dice for run in done):.4f} "
            f"| {statistics.mean(run.wall_s for run in done) / 60:.1f} |"
        )
    return "\n".join(lines + paired_lines(runs)) + "\n"


def paired_lines(runs: list[Run]) -> list[str]:
    """Each configuration against the first one run, seed by seed: the same seed trains on the
    same split, so the difference of a pair leaves out the spread between seeds that both share."""
    finished = {(run.config, run.seed): run.test_dice for run in runs if not run.error}
    names = list(dict.fromkeys(run.config for run in runs))
    lines = []
    for name in names[1:]:
        seeds = sorted(seed for config, seed in finished if config == name and (names[0], seed) in finished)
        if not seeds:
            continue
        differences = [finished[name, seed] - finished[names[0], seed] for seed in seeds]
        spread = f" ± {statistics.stdev(differences):.4f}" if len(differences) > 1 else " (one seed)"
        lines.append(
            f"| {name} | {names[0]} | {len(seeds)} | {statistics.mean(differences):+.4f}{spread} "
            f"| {min(differences):+.4f} to {max(differences):+.4f} |"
        )
    if not lines:
        return []
    header = "| configuration | against | seeds | test Dice difference, mean ± sd over seeds | lowest to highest |"
    return ["", header, "|---|---|---|---|---|", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="data.source for every run (default: params.yaml's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="train.seed values (default: 42)")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a configuration to run (repeatable; default: one named 'default', params.yaml as it is)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every configuration"
    )
    parser.add_argument("--order", choices=["seed", "config"], default="seed", help="outer loop (default: seed)")
    parser.add_argument("--output", type=Path, help="also write the table here (rewritten after each run)")
    parser.add_argument("--logs", type=Path, help="keep each run's `dvc repro` output in this folder")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the finished runs recorded beside --output with the same params"
    )
    args = parser.parse_args()

    base = YAML(typ="safe", pure=True).load((PROJECT / "params.yaml").read_text())
    common = parse_overrides(",".join(args.set))
    if args.source:
        source = Path(args.source).expanduser()
        common["data.source"] = str(source.resolve()) if source.exists() else args.source
    apply(base, common)
    configs = [parse_config(text) for text in args.config] or [("default", {})]
    plan = (
        [(config, seed) for seed in args.seeds for config in configs]
        if args.order == "seed"
        else [(config, seed) for config in configs for seed in args.seeds]
    )

    header = (
        f"Quality: `{shlex.join(['python', 'bench/quality.py', *sys.argv[1:]])}`\n\n"
        f"Machine: {machine()}; commit {commit()}; started {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{base['data']['image_size']} px, {base['train']['epochs']} epochs."
    )
    if args.resume and not args.output:
        raise SystemExit("bench: --resume reads the runs recorded beside --output: name it")
    record = args.output.with_suffix(".json") if args.output else None
    earlier = recorded_runs(record) if args.resume else []
    runs: list[Run] = []
    for (name, overrides), seed in plan:
        params = json.loads(json.dumps(base))
        apply(params, overrides | {"train.seed": seed})
        done = [run for run in earlier if (run.config, run.seed, run.params) == (name, seed, params) and not run.error]
        if done:
            print(f"bench: {name}, seed {seed}: measured before at commit {done[0].commit}, reused", flush=True)
            runs.append(done[0])
        else:
            print(f"bench: {name}, seed {seed} ...", flush=True)
            runs.append(run_pipeline(name, seed, params, args.logs))
        report = table(runs, header)
        print(report, flush=True)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            write_text(args.output, report)
            # Earlier runs this plan did not ask for stay in the record: nothing measured is lost.
            write_json(record, [asdict(run) for run in runs + [run for run in earlier if run not in runs]])


def recorded_runs(record: Path) -> list[Run]:
    if not record.exists():
        return []
    try:
        return [Run(**entry) for entry in read_json(record)]
    except (ValueError, TypeError) as error:
        raise SystemExit(f"bench: {record} is not a record this bench wrote ({error}); move it aside") from None


if __name__ == "__main__":
    main()
