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
# The MLflow run of the latest evaluation (nested under the training run), for the register stage.
EVALUATION_RUN = Path("models/evaluation_run.json")
MODEL_CARD = Path("models/model_card.md")
ONNX_MODEL = Path("models/model.onnx")
REGISTRY_DECISION = Path("models/registry.json")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_HISTORY = Path("metrics/history.csv")
# The headline test scores with their intervals, the threshold and the champion decision's score
# (what `dvc metrics show` prints); everything else evaluate scores goes to EVALUATE_DETAILS.
EVALUATE_METRICS = Path("metrics/evaluate.json")
EVALUATE_DETAILS = Path("metrics/evaluate_details.json")
# Its entry the register stage decides the alias on: the validation Dice of the model as it is
# deployed (its threshold or top class, its TTA).
VAL_DICE_DEPLOYED = "val_dice_deployed"
# onnxruntime against PyTorch on test: a verification record, not a score.
EXPORT_CHECK = Path("metrics/export.json")
# Appended to the names of the test scores at the network's input size (data.image_size), kept
# beside the headline ones taken at each photo's own size: test_dice_at_input_size, ...
AT_INPUT_SIZE = "_at_input_size"
THRESHOLD_SWEEP = Path("metrics/threshold_sweep.csv")
TEST_PER_IMAGE = Path("metrics/test_per_image.csv")
# Each validation image's Dice as deployed (the values VAL_DICE_DEPLOYED averages), by image id:
# what the register stage pairs with the champion's, image by image.
VAL_PER_IMAGE = Path("metrics/val_per_image.csv")
VAL_PER_IMAGE_FIELDS = ("id", "dice")
GALLERY = Path("metrics/gallery.png")
CONFUSION_TABLE = Path("metrics/confusion.csv")
CONFUSION_IMAGE = Path("metrics/confusion.png")
# Inside PRETRAINED_DIR: the encoder's state dict and which encoder and weights it holds.
PRETRAINED_WEIGHTS_FILE = "encoder.pt"
PRETRAINED_INFO_FILE = "info.json"
