"""Stage fetch: get the dataset and the pretrained encoder weights.

Reads:  params data.source, data.manifest, data.classes (synthetic data only), model.encoder,
        model.encoder_weights; the manifest file; data/downloads/ (download cache)
Writes: data/raw/ (the dataset, verified against the manifest), models/pretrained/ (encoder
        weights; empty for model.encoder_weights: null)
"""

from pipeline.core.stage import exit_interrupted, run_stage

# Ctrl-C during the seconds torch takes to load: one line, not a traceback.
try:
    from pathlib import Path

    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.fetch.dataset import fetch_dataset
    from pipeline.fetch.encoder_weights import fetch_pretrained_encoder
except KeyboardInterrupt:
    exit_interrupted("fetch")


def main() -> None:
    cfg = load_config()
    manifest = Path(cfg.data.manifest) if cfg.data.manifest else None
    fetch_dataset(
        cfg.data.source, paths.RAW_DIR, manifest=manifest, cache_dir=paths.DOWNLOAD_CACHE, classes=len(cfg.data.classes)
    )
    print(f"fetch: {cfg.data.source} -> {paths.RAW_DIR}" + (f" (verified against {manifest})" if manifest else ""))
    fetch_pretrained_encoder(cfg.model, paths.PRETRAINED_DIR)


if __name__ == "__main__":
    run_stage("fetch", main, __doc__)
