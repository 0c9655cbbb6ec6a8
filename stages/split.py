"""Stage split: data/raw/ -> data/split/ (seeded train/val/test, decoded and resized once)."""

from pipeline import paths
from pipeline.cli import run_stage
from pipeline.config import load_config
from pipeline.data import find_pairs, prepare, split_ids, write_split


def main() -> None:
    cfg = load_config()
    pairs = find_pairs(paths.RAW_DIR)
    prepared = prepare(pairs, cfg.data.image_size)
    assignment = split_ids(prepared.ids, cfg.split.val_fraction, cfg.split.test_fraction, cfg.split.seed)
    write_split(paths.SPLIT_DIR, prepared, assignment)
    counts = ", ".join(f"{name} {len(ids)}" for name, ids in assignment.items())
    print(f"split: {len(pairs)} pairs -> {counts} (data hash {prepared.content_hash[:12]})")


if __name__ == "__main__":
    run_stage("split", main)
