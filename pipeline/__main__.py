"""Command line: ``python -m pipeline predict|promote|prune|manifest ...`` (also installed as ``unet-pipeline``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .core.errors import PipelineError
from .core.images import INFERENCE_BATCH
from .core.stage import EXIT_INTERRUPTED, EXIT_USER_ERROR, printable_names


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return int(text)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a probability strictly between 0 and 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="write a mask PNG for each input image")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    predict.add_argument(
        "--model",
        default="models/best.pt",
        help="MLflow URI, e.g. models:/human-segmentation-unet@champion, or a checkpoint path (default: %(default)s)",
    )
    predict.add_argument("--out", type=Path, required=True, help="folder for the masks")
    predict.add_argument(
        "--threshold", type=_probability, help="probability cut-off (default: the one evaluate chose for the model)"
    )
    predict.add_argument(
        "--batch-size",
        type=_positive,
        default=INFERENCE_BATCH,
        help="images decoded and run together, at most MAX_IMAGE_PIXELS pixels between them (default: %(default)s)",
    )
    predict.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    predict.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        help="what runs the network (default: onnxruntime, the faster on CPU, where the model has an ONNX "
        "export; else torch)",
    )
    predict.add_argument(
        "--probabilities",
        action="store_true",
        help="also write 8-bit soft masks (probability x 255): <name>_probability.png, or "
        "<name>_probability_<class>.png per class after the background",
    )

    promote = commands.add_parser(
        "promote",
        help="make a registered version the champion by hand, recording why",
        description="Point the `champion` alias of mlflow.registered_model (params.yaml) at VERSION. The reason "
        "and the previous champion are recorded as the version's tags (promoted_reason, promoted_from). "
        "Only versions the register stage registered (with a validation score) can be promoted.",
    )
    promote.add_argument("version", metavar="VERSION", help="version number, e.g. 3, or models:/NAME/3")
    promote.add_argument("--reason", required=True, metavar="TEXT", help="why this version should serve")

    prune = commands.add_parser(
        "prune",
        help="delete old registered versions and their runs; never an aliased one (champion, challenger)",
        description="Keep every version of mlflow.registered_model (params.yaml) an alias points at, the newest "
        "N others and those from the runs models/run.json and models/evaluation_run.json name, with their runs; "
        "delete the other versions, their logged models (checkpoint and ONNX) and their evaluation runs, and the "
        "training runs no kept version came from. Runs and logged models are soft-deleted: `mlflow gc`, as "
        "printed, frees their files.",
    )
    prune.add_argument(
        "--keep", type=_count, required=True, metavar="N", help="newest versions kept besides aliased ones"
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")

    manifest = commands.add_parser("manifest", help="write a per-file SHA-256 manifest for data.manifest")
    manifest.add_argument("folder", type=Path)
    manifest.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    printable_names()
    try:
        if args.command == "predict":
            from .serve.predict import run

            return run(
                args.inputs,
                args.model,
                args.out,
                threshold=args.threshold,
                batch_size=args.batch_size,
                with_overlay=args.overlay,
                device=args.device,
                backend=args.backend,
                with_probabilities=args.probabilities,
            )
        if args.command == "promote":
            return _promote(args.version, args.reason)
        if args.command == "prune":
            return _prune(args.keep, dry_run=args.dry_run)
        from .core.errors import DataError
        from .core.files import write_json
        from .fetch.dataset import build_manifest

        if not args.folder.is_dir():
            raise DataError(f"{args.folder}: no such folder (give the dataset's folder)")

        files = build_manifest(args.folder)
        write_json(args.out, {"dataset": args.folder.name, "files": files})
        print(f"manifest: {len(files)} files -> {args.out}")
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted; the files written so far are complete", file=sys.stderr)
        return EXIT_INTERRUPTED


def _promote(version: str, reason: str) -> int:
    from .core.config import load_config
    from .register.registry import CHAMPION, parse_version, promote
    from .tracking import connect

    cfg = load_config()
    name = cfg.mlflow.registered_model
    number = parse_version(version, name)  # before touching the store: a foreign version is refused as such
    connect(cfg.mlflow.experiment)
    previous = promote(name, number, reason)
    print(
        f"promote: {name} version {number} is now {CHAMPION} "
        f"(was {f'version {previous}' if previous else 'none'}): {reason.strip()}"
    )
    return 0


def _prune(keep: int, *, dry_run: bool) -> int:
    from .core.config import load_config
    from .prune import apply_prune, plan_prune, workspace_runs
    from .tracking import connect, tracking_uri

    cfg = load_config()
    name = cfg.mlflow.registered_model
    connect(cfg.mlflow.experiment)
    plan = plan_prune(name, keep, workspace_runs())
    print(f"prune: {name} keeps version(s) {', '.join(plan.kept) or 'none'}")
    if not plan.versions and not plan.runs:
        print("prune: nothing to delete")
        return 0
    if not dry_run:
        apply_prune(name, plan)
    print(
        f"prune: {'would delete' if dry_run else 'deleted'} version(s) {', '.join(plan.versions) or 'none'}, "
        f"{len(plan.logged_models)} logged model(s) and {len(plan.runs)} run(s)"
    )
    if dry_run:
        return 0
    uri = tracking_uri()
    store = uri if uri.startswith("sqlite:") else "DATABASE_URI"  # a server's: only its admin can reach it
    # gc refuses to start without a tracking URI, and deletes a server's artifacts through it.
    gc = ["mlflow", "gc", "--backend-store-uri", store, "--tracking-uri", uri]
    gc += ["--run-ids", ",".join(plan.runs)] if plan.runs else []
    gc += ["--logged-model-ids", ",".join(plan.logged_models)] if plan.logged_models else []
    print(f"prune: free their files with: {shlex.join(gc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
