"""Where each stage reads and writes, relative to the project root (mirrored in dvc.yaml)."""

from pathlib import Path

RAW_DIR = Path("data/raw")
DOWNLOAD_CACHE = Path("data/downloads")
SPLIT_DIR = Path("data/split")
DATA_REPORT = Path("data/report.json")
PRETRAINED_DIR = Path("models/pretrained")
BEST_CHECKPOINT = Path("models/best.pt")
LAST_CHECKPOINT = Path("models/last.pt")
RUN_INFO = Path("models/run.json")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_HISTORY = Path("metrics/history.csv")
EVALUATE_METRICS = Path("metrics/evaluate.json")
