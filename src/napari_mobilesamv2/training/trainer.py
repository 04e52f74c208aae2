"""Fine-tune the object-aware detector on the user's label images with Ultralytics' own trainer.

The network keeps its architecture (one class, the 26-bin DFL ``Detect`` head, so the loss uses
26 bins as well) and is trained by ``ultralytics.models.yolo.detect.DetectionTrainer`` with its
augmentation (mosaic, HSV, flips, scale/translate), optimiser and EMA. Around it:

* no network access: Ultralytics' integration and analytics callbacks are not installed, the
  dataset is handed over directly (its dataset check would fetch a font), plots are off and AMP
  is off (its check downloads a model);
* no pickles are written: the trainer's checkpoints are replaced by keeping the best epoch's EMA
  weights (by validation box mAP50, then recall) in memory; the result is written as the
  pickle-free detector file of :mod:`napari_mobilesamv2.training.state`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from ..devices import resolve_device
from ..errors import CheckpointError, InputError, OutputError
from ..io import check_output_path
from ..models import download
from ..models.detector import ObjectAwareDetector
from ..models.registry import DETECTOR_FILE
from .dataset import Source, YoloDataset, write_yolo_dataset
from .evaluation import BoxScores, ThresholdChoice, evaluate_detector, tune_thresholds
from .mask_filters import MaskFilterChoice, tune_mask_filters
from .state import (
    detector_state,
    is_detector_state,
    save_detector_state,
    to_inference,
    trainable_from_pickle,
    trainable_from_state,
    write_json_atomically,
)

log = logging.getLogger(__name__)

DEFAULT_CONF, DEFAULT_IOU = 0.4, 0.9  # MobileSAMv2's thresholds
DEFAULT_EPOCHS = 30
"""Training epochs of :func:`train_detector` (and of the ``train-detector`` command)."""
DEFAULT_IMGSZ = 1024
"""Network input size for training: MobileSAMv2 detects at 1024."""
DEFAULT_BATCH = 8
"""Images per training batch."""
DEFAULT_VAL_FRACTION = 0.2
"""Share of the image pairs held out to pick the best epoch and the thresholds."""
MIN_IMGSZ, IMGSZ_MULTIPLE = 64, 32
"""Least network input size for training, and the step it comes in (the detector's largest stride)."""
MIN_BATCH = 2
"""Least batch size: BatchNorm needs two images."""
TRAINING_HELP = {
    "images": "images to train on; each is paired with the label image of the same name (or position)",
    "labels": "label images of the images (0 = background, one id per object); each object becomes one box",
    "out": "detector file to write (pickle-free, e.g. nuclei_detector.pt); its model card gets the suffix .json",
    "start": "detector to start from: an ObjectAwareModel.pt-format file or one written by train-detector "
             "(default: MobileSAMv2's ObjectAwareModel.pt)",
    "epochs": "training epochs",
    "imgsz": f"network input size in pixels, a multiple of {IMGSZ_MULTIPLE} of at least {MIN_IMGSZ}; "
             "detect with the same size",
    "batch": f"images per batch, at least {MIN_BATCH}",
    "val_fraction": "share of the image pairs held out (at least one) to pick the best epoch and the thresholds",
    "seed": "seed of the split and the training",
}
"""One line of help per setting of :func:`train_detector`, for the command line and the napari widget."""
EpochCallback = Callable[[int, dict], "bool | None"]


class TrainingCancelled(Exception):
    """Training was cancelled through ``should_cancel``; nothing was written."""


@dataclass
class TrainingReport:
    """What :func:`train_detector` did.

    Attributes
    ----------
    path : pathlib.Path
        The fine-tuned detector (pickle-free; :func:`~napari_mobilesamv2.training.load_detector_state`).
    detector : ObjectAwareDetector
        The fine-tuned detector, loaded (fused, float32, eval mode, on the training device): what
        ``load_detector_state(path)`` returns.
    card_path : pathlib.Path
        Its model card (JSON, also stored inside the detector file).
    card : dict
        The model card.
    epochs_run : int
        Epochs trained (fewer than asked when stopped).
    best_epoch : int
        The 1-based epoch whose weights were saved.
    stopped_early : bool
        Training was stopped by `on_epoch` or `should_stop`.
    history : list of dict
        Per-epoch metrics, as passed to `on_epoch`.
    before, after : BoxScores
        The starting detector at MobileSAMv2's thresholds (conf 0.4, IoU 0.9) and the fine-tuned
        one at the tuned thresholds, on the held-out images (box IoU >= 0.5).
    before_tuned : ThresholdChoice
        The starting detector at its own best thresholds.
    after_default : BoxScores
        The fine-tuned detector at conf 0.4, IoU 0.9.
    thresholds : ThresholdChoice
        Confidence and NMS IoU thresholds chosen for the fine-tuned detector (stored in the file).
    imgsz : int
        Network input size used for training and to be used for detection.
    seconds : float
        Wall time of the whole call.
    mask_filters : MaskFilterChoice or None
        The mask filters chosen on the held-out images at the tuned thresholds (stored in the file),
        or None when no `mask_pipeline` was given.
    """

    path: Path
    detector: ObjectAwareDetector
    card_path: Path
    card: dict
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    history: list[dict]
    before: BoxScores
    before_tuned: ThresholdChoice
    after: BoxScores
    after_default: BoxScores
    thresholds: ThresholdChoice
    imgsz: int
    seconds: float
    mask_filters: MaskFilterChoice | None = None


@dataclass
class _Progress:
    """State shared with the trainer callbacks."""

    on_epoch: EpochCallback | None
    should_stop: Callable[[], bool] | None
    started: float = field(default_factory=time.perf_counter)
    history: list[dict] = field(default_factory=list)
    best_key: tuple[float, float] | None = None
    best_epoch: int = 0
    best_state: dict | None = None
    stopped_early: bool = False
    should_cancel: _Cancel | None = None


def train_detector(
    images: Source,
    labels: Source,
    out: str | os.PathLike,
    *,
    start: str | os.PathLike | None = None,
    trust_weights: bool = False,
    epochs: int = DEFAULT_EPOCHS,
    imgsz: int = DEFAULT_IMGSZ,
    batch: int = DEFAULT_BATCH,
    device: str | torch.device = "auto",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    normalization: str = "auto",
    channel_axis: int | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    allow_download: bool = True,
    workdir: str | os.PathLike | None = None,
    verbose: bool = False,
    mask_pipeline: object | None = None,
) -> TrainingReport:
    """Fine-tune the object-aware detector on images and their label images.

    Parameters
    ----------
    images, labels : path-like or sequence of numpy.ndarray
        Two folders (each label image has its image's file name) or two equally long sequences
        of arrays. Every object of a label image (one id) becomes one training box.
    out : path-like
        Detector file to write (pickle-free; e.g. ``my_detector.pt``). The model card is written
        next to it with the suffix ``.json``.
    start : path-like, optional
        Detector to start from: an ``ObjectAwareModel.pt``-format pickle or a file written by this
        function. Default: MobileSAMv2's ``ObjectAwareModel.pt`` (downloaded if needed).
    trust_weights : bool
        Allow unpickling a `start` pickle whose sha256 is not the known ``ObjectAwareModel.pt``.
    epochs : int
        Training epochs.
    imgsz : int
        Network input size (longer side, multiple of 32) for training; use the same size for
        detection (it is stored in the file).
    batch : int
        Images per training batch.
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    val_fraction : float
        Share of the image pairs held out to choose the best epoch and the thresholds (at least one).
    seed : int
        Seed of the split and of the training.
    normalization : str
        Intensity mapping of the images to 8 bit (see :mod:`napari_mobilesamv2.imaging`).
    channel_axis : int, optional
        Channel axis of the images when it cannot be guessed.
    on_epoch : callable, optional
        ``on_epoch(epoch, metrics)`` after every epoch (1-based epoch; metrics: ``box_loss``,
        ``cls_loss``, ``dfl_loss``, ``precision``, ``recall``, ``map50``, ``map50_95`` on the
        held-out images, ``seconds`` since the start, ``epochs``). Returning ``False`` stops
        training; the best epoch so far is saved.
    should_stop : callable, optional
        Polled after every batch; returning True stops training after validating the current
        epoch. The best epoch so far is saved.
    should_cancel : callable, optional
        Polled after every batch and between the stages; returning True abandons training
        (for a GUI's Cancel button): :class:`TrainingCancelled` is raised and nothing is written.
    allow_download : bool
        Whether the default starting detector may be downloaded.
    workdir : path-like, optional
        Folder for the temporary dataset and training files (default: the system's temporary
        folder); removed afterwards.
    verbose : bool
        Show Ultralytics' training log and progress bars.
    mask_pipeline : MobileSAMv2, optional
        A pipeline with the image encoder and mask decoder to segment with (its own detector is not
        used). When given, the mask filters are tuned as well: segment everything runs on the
        held-out images with the fine-tuned detector at the tuned thresholds, and the
        ``min_predicted_iou``, ``min_stability`` and ``min_area`` with the best instance F1 are
        stored in the file (:func:`~napari_mobilesamv2.training.tune_mask_filters`).

    Returns
    -------
    TrainingReport

    Raises
    ------
    InputError
        Unpaired files, label images of another size, empty label images, too few objects, bad
        parameters.
    OutputError
        `out` cannot be written, or the disk fills up while training; no detector is left
        half-written.
    CheckpointError, UntrustedWeightsError, WeightsUnavailableError
        The starting detector cannot be used.
    TrainingCancelled
        `should_cancel` returned True before the detector was written.
    """
    started = time.perf_counter()
    out = _check_out(out)
    _check_parameters(epochs, imgsz, batch)
    torch_device, ultralytics_device = _devices(device)
    cancel = _Cancel(should_cancel)
    start_path, model, architecture, start_format = _starting_model(start, trust_weights, allow_download)
    work = _make_workdir(workdir)
    try:
        cancel.check()
        dataset = write_yolo_dataset(images, labels, work / "dataset", val_fraction=val_fraction, seed=seed,
                                     normalization=normalization, channel_axis=channel_axis)
        cancel.check()
        start_detector = to_inference(model).to(torch_device)
        evaluate = dict(imgsz=imgsz, device=torch_device)
        before = evaluate_detector(start_detector, dataset.val, conf=DEFAULT_CONF, iou=DEFAULT_IOU, **evaluate)
        before_tuned = tune_thresholds(start_detector, dataset.val, **evaluate)
        del start_detector
        cancel.check()
        progress = _Progress(on_epoch, should_stop, should_cancel=cancel)
        overrides = _overrides(dataset, work, epochs, imgsz, batch, ultralytics_device, seed, verbose)
        train_started = time.perf_counter()
        _run_trainer(overrides, dataset, model, progress, verbose, work)
        train_seconds = time.perf_counter() - train_started
        cancel.check()
        model.load_state_dict(progress.best_state)
        model = model.float().cpu()
        final = to_inference(model).to(torch_device)
        thresholds = tune_thresholds(final, dataset.val, **evaluate)
        after_default = evaluate_detector(final, dataset.val, conf=DEFAULT_CONF, iou=DEFAULT_IOU, **evaluate)
        inference = {"imgsz": int(imgsz), "conf": thresholds.conf, "iou": thresholds.iou}
        mask_filters = None
        if mask_pipeline is not None:
            cancel.check()
            mask_filters = tune_mask_filters(mask_pipeline, dataset.val, conf=thresholds.conf, iou=thresholds.iou,
                                             imgsz=imgsz, detector=final, device=torch_device,
                                             before_image=lambda _: cancel.check())
            inference.update(mask_filters.settings())
        card = _card(images, labels, dataset, start_path, start_format, epochs, imgsz, batch, torch_device,
                     val_fraction, seed, normalization, progress, train_seconds, before, before_tuned,
                     thresholds, after_default, inference, started, mask_filters)
        cancel.check()
        card_path = _write_outputs(model, architecture, inference, card, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TrainingReport(
        path=out, detector=final, card_path=card_path, card=card, epochs_run=len(progress.history),
        best_epoch=progress.best_epoch, stopped_early=progress.stopped_early, history=progress.history,
        before=before, before_tuned=before_tuned, after=thresholds.scores, after_default=after_default,
        thresholds=thresholds, imgsz=int(imgsz), seconds=time.perf_counter() - started, mask_filters=mask_filters,
    )


def card_path_for(out: str | os.PathLike) -> Path:
    """The model card written next to detector file `out` (same name, suffix ``.json``)."""
    return Path(out).with_suffix(".json")


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() == ".json":
        raise InputError(f"the detector file {out} ends in .json, the suffix of its model card; use e.g. .pt")
    check_output_path(out)
    check_output_path(card_path_for(out))
    return out


def _check_parameters(epochs: int, imgsz: int, batch: int) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a whole number of at least 1, not {epochs!r}")
    if not isinstance(imgsz, int) or imgsz < MIN_IMGSZ or imgsz % IMGSZ_MULTIPLE:
        raise InputError(f"imgsz must be a multiple of {IMGSZ_MULTIPLE} of at least {MIN_IMGSZ} (e.g. 640 or 1024), "
                         f"not {imgsz!r}")
    if not isinstance(batch, int) or batch < MIN_BATCH:
        raise InputError(f"batch must be a whole number of at least {MIN_BATCH} (BatchNorm needs two images), "
                         f"not {batch!r}")


def _devices(device: str | torch.device) -> tuple[torch.device, str]:
    """The torch device (:func:`~napari_mobilesamv2.devices.resolve_device`) and Ultralytics' name for it
    (``cpu``, ``0``, ``mps``)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        index = resolved.index or 0
        return torch.device("cuda", index), str(index)
    return resolved, resolved.type


class _Cancel:
    """``should_cancel`` as a check that raises :class:`TrainingCancelled`."""

    def __init__(self, should_cancel: Callable[[], bool] | None):
        self.should_cancel = should_cancel

    def __call__(self) -> bool:
        return self.should_cancel is not None and bool(self.should_cancel())

    def check(self) -> None:
        if self():
            raise TrainingCancelled("training was cancelled; no detector was written")


def _starting_model(start, trust_weights: bool, allow_download: bool) -> tuple[Path, nn.Module, dict, str]:
    """(path, unfused float32 DetectionModel, architecture, format name) of the starting detector."""
    if start is None:
        path = download.fetch(DETECTOR_FILE, download=allow_download)
        trusted = True  # fetch verified its sha256
    else:
        path = Path(start)
        if not path.is_file():
            problem = "is a directory" if path.is_dir() else "does not exist"
            raise CheckpointError(f"the starting detector {path} {problem}")
        if is_detector_state(path):
            model, architecture = trainable_from_state(path)
            return path, model, architecture, "napari-mobilesamv2-detector"
        trusted = trust_weights or download.is_known_file(DETECTOR_FILE, path)
    model, architecture = trainable_from_pickle(path, trusted=trusted)
    return Path(path), model, architecture, "ObjectAwareModel.pt (Ultralytics 8.0.120 pickle)"


def _make_workdir(workdir) -> Path:
    try:
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="mobilesamv2-train-", dir=workdir))
    except OSError as error:
        raise OutputError(f"cannot create a work folder in {workdir or tempfile.gettempdir()}: "
                          f"{error.strerror or error}; choose another workdir") from None


def _overrides(dataset: YoloDataset, work: Path, epochs: int, imgsz: int, batch: int, device: str, seed: int,
               verbose: bool) -> dict:
    n_train = len(dataset.train)
    return {
        "model": "object_aware_detector",  # a label only: the network is handed over directly
        "data": str(dataset.data_yaml),
        "task": "detect",
        "mode": "train",
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": max(2, min(batch, n_train)),
        "nbs": max(2, min(batch, n_train)),  # one optimiser step per batch: few images give few batches
        "device": device,
        "workers": 0 if device in ("cpu", "mps") else min(4, os.cpu_count() or 1),
        "project": str(work / "runs"),
        "name": "train",
        "exist_ok": True,
        "seed": seed,
        "deterministic": True,
        "plots": False,  # plotting fetches fonts
        "save": False,
        "val": True,
        "amp": False,  # Ultralytics' AMP check downloads a model
        "patience": epochs + 1,  # the best epoch is kept anyway; stopping is the caller's choice
        "close_mosaic": min(10, epochs // 4),
        "flipud": 0.5,  # microscopy has no up and down
        "verbose": verbose,
        "cache": False,
    }


def _run_trainer(overrides: dict, dataset: YoloDataset, model: nn.Module, progress: _Progress, verbose: bool,
                 work: Path) -> None:
    trainer_class = _trainer_class()
    threads = torch.get_num_threads()
    try:
        with _quiet(not verbose), _no_integrations():
            trainer = trainer_class(dataset, overrides)
        torch.set_num_threads(threads)  # Ultralytics leaves one core idle for data loading, done inline on the CPU
        trainer.model = model
        trainer.add_callback("on_train_batch_end", lambda t: _poll_stop(t, progress))
        trainer.add_callback("on_fit_epoch_end", lambda t: _end_of_epoch(t, progress))
        with _quiet(not verbose):
            trainer.train()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"the disk holding the work folder {work} is full while training; free some space "
                              "or choose another workdir; no detector was written") from None
        raise OutputError(f"training could not write to {work}: {error.strerror or error}; "
                          "no detector was written") from None
    finally:
        torch.set_num_threads(threads)
    if progress.best_state is None:
        raise RuntimeError("training ended without a validated epoch")


def _trainer_class():
    from ultralytics.models.yolo.detect import DetectionTrainer

    class OfflineDetectionTrainer(DetectionTrainer):
        """DetectionTrainer taking the dataset as given and writing no checkpoints or plots."""

        def __init__(self, dataset: YoloDataset, overrides: dict):
            self.prepared_dataset = dataset  # read by get_dataset() inside __init__
            super().__init__(overrides=overrides)

        def get_dataset(self) -> dict:
            return self.prepared_dataset.data_dict()

        def save_model(self) -> bool:  # pickles: the best weights are kept by the callback instead
            return False

        def final_eval(self) -> None:  # would re-validate best.pt, which is not written
            return None

        def plot_training_labels(self) -> None:
            return None

        def plot_training_samples(self, batch, ni) -> None:
            return None

        def plot_metrics(self) -> None:
            return None

    return OfflineDetectionTrainer


@contextlib.contextmanager
def _no_integrations() -> Iterator[None]:
    """Build a trainer without Ultralytics' analytics, Platform, W&B, MLflow, ... callbacks (no network)."""
    from ultralytics.utils import callbacks

    original = callbacks.add_integration_callbacks
    callbacks.add_integration_callbacks = lambda instance: None
    try:
        yield
    finally:
        callbacks.add_integration_callbacks = original


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Ultralytics' log and progress bars (they follow its logger's level)."""
    from ultralytics.utils import LOGGER

    if not enabled:
        yield
        return
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def _poll_stop(trainer, progress: _Progress) -> None:
    if progress.should_cancel is not None:
        progress.should_cancel.check()  # raises out of Ultralytics' loop: nothing is kept
    if progress.should_stop is not None and progress.should_stop():
        trainer.stop = True
        progress.stopped_early = True


def _end_of_epoch(trainer, progress: _Progress) -> None:
    if progress.should_cancel is not None:
        progress.should_cancel.check()
    metrics = _epoch_metrics(trainer, progress)
    progress.history.append(metrics)
    key = (metrics["map50"], metrics["recall"])
    if progress.best_key is None or key > progress.best_key:
        progress.best_key, progress.best_epoch = key, metrics["epoch"]
        progress.best_state = {key: value.detach().to("cpu", copy=True)
                               for key, value in trainer.ema.ema.state_dict().items()}
    wants_stop = progress.on_epoch is not None and progress.on_epoch(metrics["epoch"], dict(metrics)) is False
    if wants_stop or (progress.should_stop is not None and progress.should_stop()):
        progress.stopped_early = progress.stopped_early or metrics["epoch"] < trainer.epochs
        trainer.stop = True


def _epoch_metrics(trainer, progress: _Progress) -> dict:
    validation: Mapping = trainer.metrics or {}
    losses: Mapping = trainer.tloss or {}
    return {
        "epoch": int(trainer.epoch) + 1,
        "epochs": int(trainer.epochs),
        **{name: float(losses[name]) for name in ("box_loss", "cls_loss", "dfl_loss") if name in losses},
        "precision": float(validation.get("metrics/precision(B)", 0.0)),
        "recall": float(validation.get("metrics/recall(B)", 0.0)),
        "map50": float(validation.get("metrics/mAP50(B)", 0.0)),
        "map50_95": float(validation.get("metrics/mAP50-95(B)", 0.0)),
        "seconds": time.perf_counter() - progress.started,
    }


def _write_outputs(model: nn.Module, architecture: dict, inference: dict, card: dict, out: Path) -> Path:
    """Write the card and the detector so that neither is left half-written."""
    card_path = card_path_for(out)
    card_partial = card_path.with_name(card_path.name + ".partial")
    write_json_atomically(card, card_partial)
    try:
        save_detector_state(detector_state(model, architecture, inference=inference, card=card), out)
        os.replace(card_partial, card_path)
    except OSError as error:
        raise OutputError(f"cannot write {card_path}: {error.strerror or error}") from None
    finally:
        card_partial.unlink(missing_ok=True)
    return card_path


def _card(images, labels, dataset: YoloDataset, start_path: Path, start_format: str, epochs: int, imgsz: int,
          batch: int, device: torch.device, val_fraction: float, seed: int, normalization: str,
          progress: _Progress, train_seconds: float, before: BoxScores, before_tuned: ThresholdChoice,
          thresholds: ThresholdChoice, after_default: BoxScores, inference: dict, started: float,
          mask_filters: MaskFilterChoice | None) -> dict:
    n_train_objects, n_val_objects = dataset.n_objects

    def source(value) -> str:
        return str(Path(value).resolve()) if isinstance(value, (str, os.PathLike)) else f"{len(value)} arrays"

    return {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "software": {name: _version(name) for name in ("napari-mobilesamv2", "ultralytics", "torch")},
        "start": {"path": str(start_path.resolve()), "format": start_format,
                  "sha256": download.sha256_of(start_path, remembered=False)},
        "data": {
            "images": source(images), "labels": source(labels), "normalization": normalization,
            "n_images": len(dataset.train) + len(dataset.val),
            "n_train_images": len(dataset.train), "n_val_images": len(dataset.val),
            "n_train_objects": n_train_objects, "n_val_objects": n_val_objects,
            "val_images": [a.name for a in dataset.val], "val_fraction": val_fraction, "seed": seed,
        },
        "training": {
            "epochs": epochs, "epochs_run": len(progress.history), "best_epoch": progress.best_epoch,
            "selected_by": "validation box mAP50, then recall", "stopped_early": progress.stopped_early,
            "imgsz": imgsz, "batch": batch, "device": str(device), "seconds": round(train_seconds, 2),
            "history": progress.history,
        },
        "metrics": {
            "evaluated_on": "held-out images, box IoU >= 0.5",
            "before": {"default_thresholds": {"conf": DEFAULT_CONF, "iou": DEFAULT_IOU, **before.as_dict()},
                       "tuned_thresholds": before_tuned.as_dict()},
            "after": {"default_thresholds": {"conf": DEFAULT_CONF, "iou": DEFAULT_IOU, **after_default.as_dict()},
                      "tuned_thresholds": thresholds.as_dict()},
            **({"mask_filters": {"evaluated_on": "held-out images, mask IoU >= 0.5, at the tuned thresholds",
                                 **mask_filters.as_dict()}} if mask_filters is not None else {}),
        },
        "inference": {**inference, "seconds_per_image": thresholds.scores.seconds_per_image, "device": str(device)},
        "seconds": round(time.perf_counter() - started, 2),
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
