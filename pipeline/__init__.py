"""U-Net segmentation pipeline: config, data, model, training engine, tracking.

Albumentations checks PyPI for a newer release at import time; that call hangs or fails
on machines without internet, so it is switched off before any module imports it.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
