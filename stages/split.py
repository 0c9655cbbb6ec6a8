"""Stage split: check, repair, decode and resize every pair once; split into train/val/test.

Reads:  data/raw/; params data.layout, data.classes, data.palette, data.on_bad_sample,
        data.image_size, data.resize, split.val_fraction, split.test_fraction, split.seed
Writes: data/split/ (uint8 arrays per split, split.json with ids, classes and the data's
        content hash), data/report.json (what was found, repaired and skipped)
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds torch takes to load: one line, not a traceback.
try:
    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.split.preparation import build_split
    from pipeline.split.report import format_summary
except KeyboardInterrupt:
    exit_interrupted("split")


def main() -> None:
    cfg = load_config()
    report = build_split(paths.RAW_DIR, paths.SPLIT_DIR, paths.DATA_REPORT, cfg.data, cfg.split)
    print(format_summary(report))
    counts = ", ".join(f"{name} {count}" for name, count in report["split"].items())
    print(
        f"split: {report['pairs']['used']} pairs -> {counts} (data hash {report['data_hash'][:12]}); "
        f"details in {paths.DATA_REPORT}"
    )


if __name__ == "__main__":
    run_stage("split", main, __doc__)
