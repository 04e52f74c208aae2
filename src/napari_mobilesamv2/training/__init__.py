"""Fine-tuning the object-aware detector on label images, and its pickle-free file format.

>>> from napari_mobilesamv2.training import train_detector, load_detector_state
>>> report = train_detector("images/", "labels/", "my_detector.pt", epochs=30, imgsz=1024)  # doctest: +SKIP
>>> detector = load_detector_state(report.path)  # doctest: +SKIP
"""

from .dataset import (
    AnnotatedImage,
    YoloDataset,
    boxes_from_labels,
    pair_files,
    split_indices,
    write_yolo_dataset,
    yolo_lines,
)
from .evaluation import BoxScores, ThresholdChoice, count_matches, evaluate_detector, tune_thresholds
from .mask_filters import (
    AREA_GRID,
    PREDICTED_IOU_GRID,
    STABILITY_GRID,
    MaskFilterChoice,
    MaskScores,
    match_masks,
    tune_mask_filters,
)
from .state import (
    FORMAT,
    convert_detector,
    is_detector_state,
    load_detector_state,
    read_detector_state,
)
from .trainer import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_IMGSZ,
    DEFAULT_VAL_FRACTION,
    IMGSZ_MULTIPLE,
    MIN_BATCH,
    MIN_IMGSZ,
    TRAINING_HELP,
    TrainingCancelled,
    TrainingReport,
    card_path_for,
    train_detector,
)

__all__ = [
    "AREA_GRID", "PREDICTED_IOU_GRID", "STABILITY_GRID", "MaskFilterChoice", "MaskScores", "match_masks",
    "tune_mask_filters",
    "DEFAULT_BATCH", "DEFAULT_EPOCHS", "DEFAULT_IMGSZ", "DEFAULT_VAL_FRACTION", "FORMAT", "IMGSZ_MULTIPLE",
    "MIN_BATCH", "MIN_IMGSZ", "TRAINING_HELP", "AnnotatedImage", "BoxScores", "ThresholdChoice",
    "TrainingCancelled", "TrainingReport", "YoloDataset",
    "boxes_from_labels", "card_path_for", "convert_detector", "count_matches", "evaluate_detector",
    "is_detector_state", "load_detector_state", "pair_files", "read_detector_state", "split_indices",
    "train_detector", "tune_thresholds", "write_yolo_dataset", "yolo_lines",
]
