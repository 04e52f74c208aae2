"""Command line: napari-mobilesamv2 segment-everything | segment-anything | models | evaluate | train-detector.

User errors print one line ("error: ...") and exit with status 2; no traceback.
Every option of segment everything, its default and its help come from
:mod:`napari_mobilesamv2.options`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from .errors import InputError, MobileSAMv2Error, OutputError
from .models.registry import WEIGHT_FILES, default_weight_set
from .batch import PlaneRun, write_stack_outputs
from .options import (
    EMBEDDINGS_FOLDER_HELP, THROUGH_STACK_HELP, EverythingOptions, ImageOptions, ModelOptions, OptionInfo,
    PropagationOptions, options_of,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".zarr")
EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-mobilesamv2`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.verbose:
        _quiet_third_party_logs()
    with warnings.catch_warnings():
        warnings.showwarning = partial(_show_warning, verbose=args.verbose)
        try:
            return args.run(args) or 0
        except MobileSAMv2Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def _quiet_third_party_logs() -> None:
    """No connection chatter on the terminal: download failures end in one error message."""
    import pooch  # its logger is not in logging's tree: logging.getLogger("pooch") is another one

    pooch.get_logger().setLevel(logging.WARNING)  # "Downloading data from ..."
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # "Retrying (Retry(...)) after connection broken ..."


def _show_warning(message, category, filename, lineno, file=None, line=None, *, verbose: bool = False) -> None:
    """Our warnings as one ``warning: ...`` line; other packages' warnings only with --verbose, named."""
    origin = None if category.__module__.startswith(__package__) else _warning_origin(filename)
    if origin is None:
        print(f"warning: {message}", file=sys.stderr)
    elif verbose:
        print(f"warning ({origin}): {message}", file=sys.stderr)
    else:
        logging.getLogger(__name__).debug("warning from %s: %s", origin, message)


def _warning_origin(filename: str) -> str | None:
    """None for a warning raised in this package, else the name of the package (or file) that raised it."""
    path = Path(filename).resolve()
    package = Path(__file__).resolve().parent
    if path.is_relative_to(package):
        return None
    parts = path.parts
    for folder in ("site-packages", "dist-packages"):
        if folder in parts[:-1]:
            return Path(parts[parts.index(folder) + 1]).stem
    return path.name


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one ``error:`` line and status 2, like every other user error."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-mobilesamv2`` argument parser with its commands."""
    parser = _Parser(
        prog="napari-mobilesamv2", formatter_class=_Formatter,
        description="Segment every object in microscopy images with MobileSAMv2, or the objects you point at.",
        epilog="Run 'napari-mobilesamv2 COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens, including download attempts")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_everything_command(commands)
    _add_anything_command(commands)
    _add_models_command(commands)
    _add_evaluate_command(commands)
    _add_train_command(commands)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps descriptions, keeps the examples' line breaks; wider help column."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)

    def _fill_text(self, text, width, indent):
        if text.startswith("example"):
            return super()._fill_text(text, width, indent)
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)


def _version() -> str:
    from . import __version__

    return __version__


def _add_everything_command(commands) -> None:
    everything = commands.add_parser(
        "segment-everything", help="find every object in images, folders or stacks", formatter_class=_Formatter,
        description="Find every object: the object-aware detector proposes boxes, SAM's mask decoder turns "
                    "each box into one mask, and the masks become ids in a label image.",
        epilog="example:\n  napari-mobilesamv2 segment-everything docs/images/coins.png "
               "--labels coins_labels.tif --proposals coins.json",
    )
    everything.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER",
                            help="image files (TIFF, PNG, JPEG, BMP) or folders of them")
    _add_output_options(everything)
    _add_model_options(everything)
    _add_image_options(everything)
    groups = {name: everything.add_argument_group(title) for name, title in EVERYTHING_GROUPS.items()}
    groups["stack"].add_argument(
        "--stack", action="store_true",
        help="the image is a stack (Z, Y, X), (T, Y, X) or (T, Z, Y, X): segment every plane and give an object "
             "one id through neighbouring planes",
    )
    groups["stack"].add_argument("--rgb", action="store_true", help="with --stack: the last axis holds RGB channels")
    groups["stack"].add_argument(
        "--tracks", type=Path, metavar="OUT.csv",
        help="with --stack, for a time series (T, Y, X) or (T, Z, Y, X): write one row per object and time point "
             "(id, t, z, y, x, area, score) to this CSV file; a folder for several images",
    )
    groups["tiling"].add_argument(
        "--embeddings", type=Path, metavar="DIR",
        help=EMBEDDINGS_FOLDER_HELP,
    )
    groups["tiling"].add_argument(
        "--resume", action="store_true",
        help="continue an interrupted tiled run from the tiles it finished (kept in OUTPUT.run next to the output)",
    )
    for info in options_of(EverythingOptions):
        _add_option(groups[info.spec.group], info)
    _add_cluster_options(everything)
    everything.set_defaults(run=run_segment_everything)


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    from . import cluster

    group = parser.add_argument_group("cluster (dask.distributed)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help=cluster.SCHEDULER_HELP)
    where.add_argument("--workers", type=int, metavar="N", help=cluster.WORKERS_HELP)
    group.add_argument("--threads-per-worker", type=int, default=cluster.DEFAULT_THREADS_PER_WORKER, metavar="N",
                       help=cluster.THREADS_HELP)
    group.add_argument("--torch-threads", type=int, metavar="N", help=cluster.TORCH_THREADS_HELP)


EVERYTHING_GROUPS = {
    "strategy": "strategy", "detector": "object-aware detector", "grid": "grid strategy",
    "decoder": "mask decoder", "filters": "mask filters", "stack": "stacks", "tiling": "large images",
}


def _add_anything_command(commands) -> None:
    anything = commands.add_parser(
        "segment-anything", help="segment the objects given by points and boxes", formatter_class=_Formatter,
        description="Segment one object per box and per object point. Coordinates are image pixels: x is the "
                    "column, y the row, (0, 0) the top-left corner. With --stack every point and box starts with "
                    "the index of its plane on each stack axis, and a stack point is given in array order (row before "
                    "column): Z,Y,X points and Z,X0,Y0,X1,Y1 boxes for a (Z, Y, X) stack, T,Z,Y,X points for "
                    "(T, Z, Y, X). --propagate (which implies --stack) follows each object from its plane "
                    "through the stack.",
        epilog="examples:\n  napari-mobilesamv2 segment-anything docs/images/coins.png --points 120,80 "
               "--boxes 10,10,60,50 --labels clicked.tif\n"
               "  napari-mobilesamv2 segment-anything nuclei_zyx.tif --points 12,64,80 "
               "--boxes 12,10,10,60,50 --propagate --labels nuclei_labels.tif",
    )
    anything.add_argument("image", type=Path, help="the image file")
    prompts = anything.add_argument_group("prompts")
    prompts.add_argument("--points", nargs="+", default=[], metavar="X,Y",
                         help="object points (one object each); in a stack Z,Y,X (plane index, row, column)")
    prompts.add_argument("--negative-points", nargs="+", default=[], metavar="X,Y",
                         help="background points (shared by every point object of their plane); in a stack Z,Y,X")
    prompts.add_argument("--boxes", nargs="+", default=[], metavar="X0,Y0,X1,Y1",
                         help="boxes (one object each); in a stack Z,X0,Y0,X1,Y1 (plane index first)")
    stack = anything.add_argument_group("stacks")
    stack.add_argument("--stack", action="store_true",
                       help="the image is a stack (Z, Y, X), (T, Y, X) or (T, Z, Y, X); prompts start with their "
                            "plane index")
    stack.add_argument("--rgb", action="store_true", help="with --stack: the last axis holds RGB channels")
    stack.add_argument("--propagate", action="store_true",
                       help="the image is a stack (implies --stack): " + THROUGH_STACK_HELP)
    stack.add_argument("--axis", type=int, default=-1, metavar="N",
                       help="with --propagate: the stack axis to follow, 0 for the first (t of (T, Z, Y, X)) "
                            "(default: -1, the last: z)")
    for info in options_of(PropagationOptions):
        _add_option(stack, info)
    stack.add_argument("--tracks", type=Path, metavar="OUT.csv",
                       help="with --stack, for a time series: write one row per object and time point (id, t, z, "
                            "y, x, area, score = mean predicted IoU) to this CSV file; the first stack axis is t")
    _add_output_options(anything)
    _add_model_options(anything, detector=False)
    _add_image_options(anything)
    anything.add_argument_group("embeddings").add_argument(
        "--embeddings", type=Path, metavar="DIR",
        help="keep the image embedding in this folder: later prompts on the same image only run the decoder",
    )
    anything.set_defaults(run=run_segment_anything)


def _add_models_command(commands) -> None:
    models = commands.add_parser(
        "models", help="list, download, verify or locate the weights files", formatter_class=_Formatter,
        description="The weights files live in one cache folder (set NAPARI_MOBILESAMV2_CACHE to move it).",
        epilog="examples:\n  napari-mobilesamv2 models list\n  napari-mobilesamv2 models download\n"
               "  napari-mobilesamv2 models verify",
    )
    models.add_argument(
        "action", choices=("list", "download", "verify", "path"), metavar="ACTION",
        help="list: every file, its size and whether it is in the cache; download: fetch missing files; "
             "verify: check the sha256 of cached files; path: print the cache folder (or the files' paths)",
    )
    models.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"weights files (default for download and verify: the default set, {', '.join(default_weight_set())}; "
             "for list: all)",
    )
    models.set_defaults(run=run_models)


_METAVARS = {int: "N", float: "X"}


def _add_evaluate_command(commands) -> None:
    from .evaluation import DEFAULT_IOU_THRESHOLDS, DEFAULT_KS

    evaluate = commands.add_parser(
        "evaluate", help="compare label images or proposals with ground-truth label images",
        formatter_class=_Formatter,
        description="Match predicted label images with ground-truth label images (precision, recall, F1, mean "
                    "matched IoU and panoptic quality at one IoU threshold; AP = tp / (tp + fp + fn) averaged over "
                    "IoU 0.5:0.95), or with --proposals the proposal JSON files of segment-everything (mask AR@K "
                    "and box recall). Folders pair files by name (a.tif with a.tif, a_labels.tif or "
                    "a_proposals.json); lists of files pair in their order.",
        epilog="example:\n  napari-mobilesamv2 evaluate --gt ground_truth/ --pred predicted/ --json scores.json",
    )
    evaluate.add_argument("--gt", nargs="+", type=Path, required=True, metavar="LABELS",
                          help="ground-truth label images (0 = background) or folders of them")
    evaluate.add_argument("--pred", nargs="+", type=Path, required=True, metavar="PRED",
                          help="predicted label images, or proposal JSON files with --proposals, or folders of them")
    evaluate.add_argument("--json", type=Path, metavar="OUT", help="also write every number as JSON to this file")
    labels = evaluate.add_argument_group("label images")
    labels.add_argument("--iou", type=float, default=0.5, metavar="X",
                        help="IoU threshold of precision, recall, F1, mean matched IoU and PQ: one of "
                             f"{', '.join(f'{t:g}' for t in DEFAULT_IOU_THRESHOLDS)} (default: 0.5)")
    proposals = evaluate.add_argument_group("proposals")
    proposals.add_argument("--proposals", action="store_true",
                           help="the predictions are COCO results JSON files (segment-everything --proposals)")
    proposals.add_argument("--ks", nargs="+", type=int, default=list(DEFAULT_KS), metavar="K",
                           help=f"proposals per image of mask AR@K (default: {' '.join(map(str, DEFAULT_KS))})")
    proposals.add_argument("--box-iou", type=float, default=0.5, metavar="X",
                           help="least box IoU of box recall (default: 0.5)")
    proposals.add_argument("--by-area", action="store_true",
                           help="also AR@K of small, medium and large objects (about four times slower)")
    evaluate.set_defaults(run=run_evaluate)


def _add_train_command(commands) -> None:
    from .training import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_IMGSZ, DEFAULT_VAL_FRACTION, TRAINING_HELP

    train = commands.add_parser(
        "train-detector", help="fine-tune the object-aware detector on your label images",
        formatter_class=_Formatter,
        description="Fine-tune the object-aware detector on images and their label images (same file names; "
                    "each object id becomes one box). A seeded share of the pairs is held out to pick the best "
                    "epoch and the detector thresholds. Writes a pickle-free detector file (use it with "
                    "segment-everything --detector-weights) and its model card (.json next to it). Ctrl+C stops "
                    "after the current batch and keeps the best epoch so far.",
        epilog="example:\n  napari-mobilesamv2 train-detector --images train/images --labels train/labels "
               "--out nuclei_detector.pt --epochs 30",
    )
    data = train.add_argument_group("data")
    data.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of images")
    data.add_argument("--labels", type=Path, required=True, metavar="DIR",
                      help="folder of label images with the images' file names (0 = background)")
    data.add_argument("--out", type=Path, required=True, metavar="FILE", help=TRAINING_HELP["out"])
    for info in options_of(ImageOptions):
        if info.name != "channels":
            _add_option(data, info)
    data.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="X",
                      help=f"{TRAINING_HELP['val_fraction']} (default: {DEFAULT_VAL_FRACTION})")
    data.add_argument("--seed", type=int, default=0, metavar="N", help=f"{TRAINING_HELP['seed']} (default: 0)")
    training = train.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, metavar="N",
                          help=f"{TRAINING_HELP['epochs']} (default: {DEFAULT_EPOCHS})")
    training.add_argument("--imgsz", type=int, default=DEFAULT_IMGSZ, metavar="N",
                          help=f"{TRAINING_HELP['imgsz']} (default: {DEFAULT_IMGSZ})")
    training.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                          help=f"{TRAINING_HELP['batch']} (default: {DEFAULT_BATCH})")
    training.add_argument("--device", default="auto", metavar="DEVICE",
                          help="auto, cpu, cuda, cuda:N or mps (default: auto: CUDA, then MPS, then CPU)")
    training.add_argument("--workdir", type=Path, metavar="DIR",
                          help="folder for temporary training files, removed afterwards (default: the system's "
                               "temporary folder)")
    start = train.add_argument_group("starting detector")
    start.add_argument("--detector-weights", type=Path, metavar="FILE", help=TRAINING_HELP["start"])
    for info in options_of(ModelOptions):
        if info.name == "trust_weights":
            _add_option(start, info)
    start.add_argument("--no-download", action="store_true", help="never download the default starting detector")
    filters = train.add_argument_group(
        "mask filters", "with the image encoder and mask decoder at hand (given here or already downloaded), the "
        "--min-* mask filters with the best held-out instance F1 are chosen too and stored in the detector file")
    for info in options_of(ModelOptions):
        if info.name == "encoder":
            _add_option(filters, info)
    filters.add_argument("--encoder-weights", type=Path, metavar="FILE", help="image encoder file you already have")
    filters.add_argument("--decoder-weights", type=Path, metavar="FILE",
                         help="prompt-guided mask decoder file you already have (Prompt_guided_Mask_Decoder.pt)")
    train.set_defaults(run=run_train_detector)


def _add_option(parser, info: OptionInfo) -> None:
    """One command-line flag from a core option: same default, choices and help."""
    if info.type is bool and info.default is True:
        parser.add_argument("--no-" + info.flag[2:], dest=info.name, action="store_false",
                            help=f"do not: {info.spec.help}")
        return
    if info.type is bool:
        parser.add_argument(info.flag, action="store_true", help=info.help_with_default())
        return
    kwargs = {"type": info.type, "default": info.default, "help": info.help_with_default(),
              "metavar": _METAVARS.get(info.type, info.name.upper()) if info.spec.choices is None else None}
    if info.spec.choices is not None:
        kwargs["choices"] = info.spec.choices
    parser.add_argument(info.flag, **kwargs)


def _add_model_options(parser: argparse.ArgumentParser, detector: bool = True) -> None:
    group = parser.add_argument_group("models")
    for info in options_of(ModelOptions):
        if info.name != "trust_weights" or detector:
            _add_option(group, info)
    group.add_argument("--encoder-weights", type=Path, metavar="FILE", help="image encoder file you already have")
    group.add_argument("--decoder-weights", type=Path, metavar="FILE",
                       help="prompt-guided mask decoder file you already have (Prompt_guided_Mask_Decoder.pt)")
    if detector:
        group.add_argument("--detector-weights", type=Path, metavar="FILE",
                           help="object-aware detector file you already have (ObjectAwareModel.pt)")
    group.add_argument("--no-download", action="store_true", help="never download missing weights")


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image")
    for info in options_of(ImageOptions):
        if info.name == "channels":
            group.add_argument("--channels", type=_channel_list, metavar="C[,C[,C]]", help=info.help_with_default())
        else:
            _add_option(group, info)


def options_from_args(cls, args: argparse.Namespace):
    """An options object of `cls` from the parsed flags that it has."""
    values = {info.name: getattr(args, info.name) for info in options_of(cls) if hasattr(args, info.name)}
    return cls.from_dict(values)


def _channel_list(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        message = f"expected comma-separated channel numbers such as 0,2, not {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("outputs")
    group.add_argument("--labels", type=Path, metavar="OUT",
                       help="label image to write (.tif, int32, 0 = background); a folder for several images")
    group.add_argument("--proposals", type=Path, metavar="OUT",
                       help="COCO results JSON to write (RLE masks; result k has label id k + 1); a folder for "
                            "several images")


def _load_model(args: argparse.Namespace, with_detector: bool):
    from .pipeline import MobileSAMv2

    model = options_from_args(ModelOptions, args)
    return MobileSAMv2.from_pretrained(
        model.encoder, encoder_weights=args.encoder_weights, decoder_weights=args.decoder_weights,
        detector_weights=getattr(args, "detector_weights", None), device=model.device,
        trust_weights=model.trust_weights, download=not args.no_download, load_detector=with_detector,
    )


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); check that files exist."""
    images = []
    for path in paths:
        if path.is_dir() and path.suffix.lower() == ".zarr":
            images.append(path)  # a zarr store is one image
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and (p.is_file() or p.suffix.lower() == ".zarr"))
            if not found:
                raise InputError(f"the folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise InputError(f"{path} does not exist; check the path and the file name")
    return images


def output_paths(args: argparse.Namespace, images: list[Path]) -> list[tuple[Path | None, Path | None]]:
    """Where to write labels and proposals for each image."""
    from .io import check_output_path

    if args.labels is None and args.proposals is None:
        raise InputError("nothing to write: give --labels OUT.tif and/or --proposals OUT.json")
    several = len(images) > 1
    outputs = []
    for image in images:
        pair = []
        for target, suffix in ((args.labels, "_labels.tif"), (args.proposals, "_proposals.json")):
            if target is None:
                pair.append(None)
                continue
            if several:
                if not target.is_dir():
                    raise InputError(f"with several images, {target} must be an existing folder")
                target = target / f"{image.stem}{suffix}"
            pair.append(check_output_path(target, tuple(images)))
        if pair[0] is not None and pair[0] == pair[1]:
            raise OutputError(f"--labels and --proposals both name {pair[0]}; give two different files")
        outputs.append(tuple(pair))
    _refuse_shared_outputs(images, outputs)
    return outputs


def _refuse_shared_outputs(images: list[Path], outputs: list[tuple[Path | None, Path | None]]) -> None:
    """Two images whose outputs have the same name (a.tif, a.png) would overwrite each other."""
    writer: dict[Path, Path] = {}
    for image, pair in zip(images, outputs):
        for target in filter(None, pair):
            key = target.resolve()
            if key in writer:
                raise OutputError(
                    f"{writer[key]} and {image} would both be written to {target}; "
                    "rename one of them or run them separately"
                )
            writer[key] = image


def run_segment_everything(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .io import read_image

    options = options_from_args(EverythingOptions, args)
    image_options = options_from_args(ImageOptions, args)
    images = collect_images(args.images)
    outputs = output_paths(args, images)
    tracks = _tracks_paths(args, images)
    if args.scheduler is not None or args.workers is not None:
        if args.tracks is not None:
            raise InputError("--tracks is written by runs on this machine only; run without --scheduler/--workers, "
                             "or write the labels on the cluster and the tracks afterwards from Python "
                             "(napari_mobilesamv2.tracks)")
        return _segment_on_cluster(args, options, image_options, images, outputs)
    embeddings = _embedding_cache(args.embeddings)
    model = _load_model(args, with_detector=options.strategy == "object-aware")
    _hint_detector_settings(model, options, args.detector_weights)
    for image_id, (path, (labels_path, proposals_path)) in enumerate(tqdm(list(zip(images, outputs)),
                                                                          desc="segment everything", unit="image")):
        if args.stack:
            count = _segment_stack_file(model, read_image(path), labels_path, proposals_path, args.rgb, options,
                                        image_options, tracks[image_id])
        else:
            run = PlaneRun(model, path, labels_path, proposals_path, image_id, embeddings, args.resume,
                           drive=_run_with_bar)
            count = run.segment(options, image_options)
        tqdm.write(f"{path}: {count} objects")
    return 0


def _segment_on_cluster(args: argparse.Namespace, options, image_options, images, outputs) -> int:
    """The same run on a dask cluster: the workers segment and write, the client shows progress."""
    from types import SimpleNamespace

    from tqdm.auto import tqdm

    from . import cluster

    if args.workers is None and args.threads_per_worker != cluster.DEFAULT_THREADS_PER_WORKER:
        raise InputError("--threads-per-worker sets the threads of the workers that --workers starts; with "
                         "--scheduler, give dask worker its --nthreads")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise InputError(f"--torch-threads must be at least 1, not {args.torch_threads}")
    if not args.verbose:
        import distributed  # noqa: F401  its logging settings come with it: quieted after

        logging.getLogger("distributed").setLevel(logging.ERROR)  # no worker start/stop chatter
    model_options = options_from_args(ModelOptions, args)
    spec = cluster.ModelSpec(
        model_options.encoder, encoder_weights=args.encoder_weights, decoder_weights=args.decoder_weights,
        detector_weights=args.detector_weights, device=model_options.device,
        trust_weights=model_options.trust_weights, download=not args.no_download,
        load_detector=options.strategy == "object-aware",
        torch_threads=args.torch_threads or cluster.in_process_threads(),
    )
    with cluster.connect(args.scheduler, args.workers, args.threads_per_worker) as client:
        print(f"dask dashboard: {client.dashboard_link}", flush=True)
        loaded = cluster.load_models(client, spec)
        _hint_detector_settings(SimpleNamespace(detector_settings=loaded["detector_settings"]), options,
                                args.detector_weights)
        with tqdm(desc="segment everything", unit="task", total=0) as bar:
            def on_task(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            cluster.segment_files(
                client, spec, images, outputs, options, image_options, stack=args.stack, rgb=args.rgb,
                resume=args.resume, embeddings=args.embeddings, on_task=on_task,
                on_image=lambda path, count: tqdm.write(f"{path}: {count} objects"),
            )
    return 0


def _hint_detector_settings(model, options: EverythingOptions, path: Path | None) -> None:
    """One line when a fine-tuned detector file stores settings other than the ones in use (never applied)."""
    stored = getattr(model, "detector_settings", None) or {}
    if options.strategy != "object-aware" or not stored:
        return
    differ = {name: value for name, value in stored.items() if getattr(options, name) != value}
    if differ:
        tuned = _setting_flags(stored)
        used = " ".join(_setting_flags({name: getattr(options, name)}) or f"no --{name.replace('_', '-')}"
                        for name in stored)
        print(f"hint: {path} was tuned for {tuned}; this run uses {used} (pass the flags to use its settings)",
              file=sys.stderr)


def _embedding_cache(folder: Path | None):
    if folder is None:
        return None
    from .embedding_cache import EmbeddingCache

    return EmbeddingCache(folder)


def _run_with_bar(steps):
    """Drive engine steps with a progress bar of planes that shows the current step."""
    from tqdm.auto import tqdm

    from . import engine

    with tqdm(desc="planes", unit="plane", leave=False) as bar:
        def show(progress) -> None:
            bar.total = progress.total
            bar.n = progress.done
            bar.set_postfix_str(progress.detail[:60], refresh=True)

        return engine.run(steps, show)


def _segment_stack_file(model, stack, labels_path, proposals_path, rgb: bool, options, image_options,
                        tracks_path: Path | None = None) -> int:
    """Segment and link a stack; write its nD labels, one proposal list (image_id = plane) and its tracks."""
    from . import engine

    stack_shape, read_plane = engine.array_plane_reader(stack, 3 if rgb else 2)
    _check_time_series(tracks_path, stack_shape)
    found = _run_with_bar(engine.segment_stack_steps(model, stack_shape, read_plane, options, image_options.conversion()))
    write_stack_outputs(found, labels_path, proposals_path, tracks_path)
    return found.link.n_objects


def _tracks_paths(args: argparse.Namespace, images: list[Path]) -> list[Path | None]:
    """Where to write each image's tracks table (``--tracks``), checked before any model runs."""
    from .io import check_output_path

    if args.tracks is None:
        return [None] * len(images)
    if not args.stack:
        raise InputError("--tracks needs --stack: tracks are objects linked through the time points of a stack")
    if len(images) > 1 and not args.tracks.is_dir():
        raise InputError(f"with several images, {args.tracks} must be an existing folder")
    paths = [args.tracks / f"{image.stem}_tracks.csv" if len(images) > 1 else args.tracks for image in images]
    return [check_output_path(path, tuple(images)) for path in paths]


def _check_time_series(tracks_path: Path | None, stack_shape: tuple[int, ...]) -> None:
    if tracks_path is not None and len(stack_shape) not in (1, 2):
        raise InputError(f"--tracks needs a (T, Y, X) or (T, Z, Y, X) stack; this one has the stack axes "
                         f"{stack_shape}")


def _write_tracks(path: Path, labels: np.ndarray, scores: np.ndarray | None) -> None:
    from .tracks import tracks_table, write_tracks_csv

    write_tracks_csv(path, tracks_table(labels, scores))


def run_segment_anything(args: argparse.Namespace) -> int:
    from .io import read_image

    if args.stack or args.propagate:
        return _segment_anything_stack(args)
    for flag, given in (("--tracks", args.tracks is not None),
                        ("--rgb", args.rgb)):
        if given:
            raise InputError(f"{flag} needs --stack (and prompts that start with their plane index)")
    points = [_numbers(p, 2, "--points") for p in args.points]
    negative = [_numbers(p, 2, "--negative-points") for p in args.negative_points]
    boxes = [_numbers(b, 4, "--boxes") for b in args.boxes]
    if not points and not boxes:
        raise InputError("give at least one of --points X,Y or --boxes X0,Y0,X1,Y1")
    (labels_path, proposals_path), = output_paths(args, [args.image])
    embeddings = _embedding_cache(args.embeddings)
    model = _load_model(args, with_detector=False)
    image, conversion = read_image(args.image), options_from_args(ImageOptions, args).conversion()
    embedding = None
    if embeddings is not None:
        from .engine import embed_cached

        embedding = embed_cached(model, embeddings, model.prepare_image(image, **conversion))
    result = model.segment_anything(
        image, points=points + negative or None, point_labels=[1] * len(points) + [0] * len(negative),
        boxes=boxes or None, embedding=embedding, **conversion,
    )
    _write_outputs(result, labels_path, proposals_path, 0)
    print(f"{args.image}: {len(result)} objects")
    return 0


def _segment_anything_stack(args: argparse.Namespace) -> int:
    """Prompts on the planes of a stack, each object on its plane or followed through the stack."""
    from .io import check_output_path, read_image, write_labels
    from .propagate import check_axis, propagate_steps

    if args.proposals is not None:
        raise InputError("with --stack, segment-anything writes --labels and --tracks, not --proposals")
    if args.labels is None and args.tracks is None:
        raise InputError("nothing to write: give --labels OUT.tif and/or --tracks OUT.csv")
    outputs = [check_output_path(p, (args.image,)) for p in (args.labels, args.tracks) if p is not None]
    if len(outputs) == 2 and outputs[0] == outputs[1]:
        raise OutputError(f"--labels and --tracks both name {outputs[0]}; give two different files")
    if not (args.points or args.boxes):
        raise InputError("give at least one of --points Z,Y,X or --boxes Z,X0,Y0,X1,Y1 (plane index first)")
    options = options_from_args(PropagationOptions, args)
    conversion = options_from_args(ImageOptions, args).conversion()
    stack = read_image(args.image)
    from .engine import array_plane_reader

    stack_shape, read_plane = array_plane_reader(stack, 3 if args.rgb else 2)
    _check_time_series(args.tracks, stack_shape)
    objects = _stack_objects(args, stack_shape)
    if args.propagate:
        check_axis(args.axis, stack_shape)
    embeddings = _embedding_cache(args.embeddings)
    model = _load_model(args, with_detector=False)
    found = _run_with_bar(propagate_steps(model, stack_shape, read_plane, objects, options, conversion,
                                          axis=args.axis, through=args.propagate, embeddings=embeddings))
    if args.labels is not None:
        write_labels(args.labels, found.labels)
    if args.tracks is not None:
        _write_tracks(args.tracks, found.labels, found.table["predicted_iou"])
    print(f"{args.image}: {found.n_objects} objects on {len(np.unique(found.planes['plane']))} planes")
    return 0


def _stack_objects(args: argparse.Namespace, stack_shape: tuple[int, ...]) -> list:
    """(plane, ObjectPrompt) of every object given by --points, --negative-points and --boxes."""
    from .propagate import check_plane
    from .prompts.user import objects_from_prompts

    n = len(stack_shape)
    where = ",".join("TZ"[-n:] if n <= 2 else ["P"] * n)
    parsed = {
        "points": [_row_column(_numbers(p, n + 2, f"--points ({where},Y,X)"), n) for p in args.points],
        "negative": [_row_column(_numbers(p, n + 2, f"--negative-points ({where},Y,X)"), n)
                     for p in args.negative_points],
        "boxes": [_numbers(b, n + 4, f"--boxes ({where},X0,Y0,X1,Y1)") for b in args.boxes],
    }
    planes: dict[tuple, dict[str, list]] = {}
    for kind, items in parsed.items():
        for values in items:
            if any(v != int(v) for v in values[:n]):
                raise InputError(f"plane indices must be whole numbers, not {values[:n]}")
            key = check_plane([int(v) for v in values[:n]], stack_shape)
            planes.setdefault(key, {"points": [], "negative": [], "boxes": []})[kind].append(values[n:])
    objects = []
    for key, given in planes.items():
        points = given["points"] + given["negative"]
        labels = [1] * len(given["points"]) + [0] * len(given["negative"])
        found = objects_from_prompts(points or None, labels, None, given["boxes"] or None)
        objects.extend((key, obj) for obj in found)
    return objects


def _row_column(values: list[float], n: int) -> list[float]:
    """A stack point given as plane index, row, column, in the (plane, x, y) order of 2D prompts."""
    return [*values[:n], values[n + 1], values[n]]


def _numbers(text: str, count: int, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise InputError(f"{option} expects {count} comma-separated numbers per item, got {text!r}")
    return values


def _write_outputs(result, labels_path, proposals_path, image_id: int) -> None:
    from .export import coco_results, write_json
    from .io import write_labels

    if labels_path is not None:
        write_labels(labels_path, result.labels)
    if proposals_path is not None:
        write_json(proposals_path, coco_results(result, image_id=image_id))


def run_models(args: argparse.Namespace) -> int:
    from .models import download

    unknown = [n for n in args.names if n not in WEIGHT_FILES]
    if unknown:
        raise InputError(f"unknown weights file(s) {', '.join(unknown)}; known: {', '.join(WEIGHT_FILES)}")
    if args.action == "path":
        print(download.cache_dir() if not args.names else "\n".join(str(download.cached_path(n)) for n in args.names))
    elif args.action == "list":
        _print_table(["file", "used for", "size", "status", "description"],
                     [_listing_row(name) for name in args.names or WEIGHT_FILES])
    elif args.action == "download":
        for name in args.names or default_weight_set():
            print(download.fetch(name))
    else:
        return _verify(args.names or default_weight_set())
    return 0


def _listing_row(name: str) -> list[str]:
    from .models import download

    entry, path = WEIGHT_FILES[name], download.cached_path(name)
    size = entry.size or (path.stat().st_size if path.is_file() else None)
    return [name, entry.slot, f"{size / 1e6:,.0f} MB" if size else "unknown",
            "in cache" if path.is_file() else "missing", entry.description]


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _verify(names: Sequence[str]) -> int:
    """Check the cached files' sha256; status 2 when one is missing or damaged."""
    from .models import download

    problems = 0
    for name in names:
        if not download.cached_path(name).is_file():
            print(f"{name}: missing (get it with 'napari-mobilesamv2 models download {name}')")
            problems += 1
            continue
        try:
            print(download.verify(name))
        except MobileSAMv2Error as exc:
            print(f"{name}: {exc}")
            problems += 1
    print(f"cache folder: {download.cache_dir()}")
    return EXIT_USER_ERROR if problems else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .evaluation import DEFAULT_IOU_THRESHOLDS, evaluate_label_files, evaluate_proposal_files, pair_files
    from .evaluation.files import LABEL_SUFFIXES, PROPOSAL_SUFFIXES
    from .io import check_output_path

    _refuse_unflagged_proposals(args)
    pairs = pair_files(args.gt, args.pred, PROPOSAL_SUFFIXES if args.proposals else LABEL_SUFFIXES)
    if args.json is not None:  # refused before the work, not after
        check_output_path(args.json, tuple(p for pair in pairs for p in pair))
    bars = []  # opened at the first image: pairing errors come first, as one line

    def advance(index: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc="evaluate", total=total, unit="image", leave=False))
        bars[0].update(1)

    try:
        if args.proposals:
            evaluation = evaluate_proposal_files(args.gt, args.pred, ks=args.ks, box_iou_threshold=args.box_iou,
                                                 by_area=args.by_area, on_image=advance)
            rows = [_proposal_row(gt.name, result) for (gt, _), result in zip(evaluation.pairs, evaluation.per_image)]
            total = _proposal_row(f"total ({len(rows)} images)", evaluation.total)
        else:
            iou = _check_report_iou(args.iou, DEFAULT_IOU_THRESHOLDS)
            evaluation = evaluate_label_files(args.gt, args.pred, DEFAULT_IOU_THRESHOLDS, on_image=advance)
            rows = [_matching_row(gt.name, result, iou) for (gt, _), result in zip(evaluation.pairs,
                                                                                     evaluation.per_image)]
            total = _matching_row(f"total ({len(rows)} images)", evaluation.total, iou)
    finally:
        for bar in bars:
            bar.close()
    if args.json is not None:
        _write_evaluation_json(args.json, evaluation, rows, total, args)
    header = list(rows[0])
    _print_columns(header, [[_cell(row[key]) for key in header] for row in [*rows, total]])
    if args.proposals:
        print(f"AR@K: mask recall of the best K proposals averaged over IoU 0.5:0.95; box recall at box IoU "
              f"{args.box_iou:g} with every proposal")
    else:
        print(f"precision, recall, f1, mean_iou (of matched objects) and pq at IoU {args.iou:g}; "
              "ap50_95 = tp / (tp + fp + fn) averaged over IoU 0.5:0.95")
    return 0


def _refuse_unflagged_proposals(args: argparse.Namespace) -> None:
    if not args.proposals and any(p.suffix.lower() == ".json" for p in args.pred):
        raise InputError("the predictions are JSON files: add --proposals to evaluate proposals, or give "
                         "label images")


def _check_report_iou(iou: float, thresholds: Sequence[float]) -> float:
    for threshold in thresholds:
        if abs(threshold - iou) < 1e-9:
            return threshold
    raise InputError(f"--iou must be one of {', '.join(f'{t:g}' for t in thresholds)}, not {iou:g}")


def _matching_row(name: str, result, iou: float) -> dict:
    """One image's (or the total's) numbers at IoU `iou`, and AP over IoU 0.5:0.95."""
    stats = result.at(iou)
    return {
        "image": name, "n_true": stats.n_true, "n_pred": stats.n_pred, "tp": stats.tp, "fp": stats.fp,
        "fn": stats.fn, "precision": stats.precision, "recall": stats.recall, "f1": stats.f1,
        "mean_iou": stats.mean_matched_iou, "pq": stats.panoptic_quality,
        "ap50_95": result.mean("average_precision"),
    }


def _proposal_row(name: str, result) -> dict:
    row = {"image": name, "n_objects": result.n_objects, "n_proposals": result.n_proposals}
    row.update({f"AR@{k}": value for k, value in zip(result.ks, result.average_recall)})
    for area, values in result.average_recall_by_area.items():
        row.update({f"AR@{k}_{area}": value for k, value in zip(result.ks, values)})
    row["box_recall"] = result.box_recall
    return row


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _print_columns(header: list[str], rows: list[list[str]]) -> None:
    """A table with the first column left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())


def _write_evaluation_json(path: Path, evaluation, rows: list[dict], total: dict, args) -> None:
    import math

    from .export import write_json
    from .io import check_output_path

    def plain(row: dict) -> dict:
        return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}

    inputs = tuple(p for pair in evaluation.pairs for p in pair)
    summary = {"images": [plain(row) for row in rows], "total": plain(total)}
    if not args.proposals:
        summary["iou_threshold"] = float(args.iou)
    write_json(check_output_path(path, inputs), {**evaluation.to_dict(), "summary": summary})


def run_train_detector(args: argparse.Namespace) -> int:
    from .training import train_detector

    image = options_from_args(ImageOptions, args)
    mask_pipeline, not_tuned = _mask_pipeline(args)
    stop = _StopOnInterrupt()
    with stop:
        report = train_detector(
            args.images, args.labels, args.out, start=args.detector_weights, trust_weights=args.trust_weights,
            epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device,
            val_fraction=args.val_fraction, seed=args.seed, normalization=image.normalization,
            channel_axis=image.channel_axis, on_epoch=_print_epoch, should_stop=stop,
            allow_download=not args.no_download, workdir=args.workdir, verbose=args.verbose,
            mask_pipeline=mask_pipeline,
        )
    _print_training_report(report, stop.requested, not_tuned)
    return 0


def _mask_pipeline(args: argparse.Namespace):
    """(pipeline to tune the mask filters with, None) or (None, why they are not tuned); never downloads."""
    from .errors import WeightsUnavailableError
    from .pipeline import MobileSAMv2

    encoder = options_from_args(ModelOptions, args).encoder
    try:
        pipeline = MobileSAMv2.from_pretrained(encoder, encoder_weights=args.encoder_weights,
                                               decoder_weights=args.decoder_weights, device=args.device,
                                               download=False, load_detector=False)
    except WeightsUnavailableError:
        return None, (f"mask filters not tuned: the {encoder} image encoder or the mask decoder weights are not "
                      "here; give --encoder-weights FILE --decoder-weights FILE (or run 'napari-mobilesamv2 models "
                      "download' first) to have the --min-* filters chosen too")
    return pipeline, None


def _setting_flags(settings: dict) -> str:
    """Flags of the settings that have a value, e.g. ``--conf 0.3 --min-area 50`` (``None``: left out)."""
    return " ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in settings.items() if value is not None)


class _StopOnInterrupt:
    """While active, the first Ctrl+C asks training to stop after the current batch; a second one quits."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._interrupted)
        return self

    def __exit__(self, *exc_info) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _interrupted(self, signum, frame) -> None:
        import signal

        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print("stopping after the current batch and keeping the best epoch so far (Ctrl+C again to quit)",
              file=sys.stderr, flush=True)


def _print_epoch(epoch: int, metrics: dict) -> None:
    losses = "  ".join(f"{name.removesuffix('_loss')} {metrics[name]:.3f}"
                       for name in ("box_loss", "cls_loss", "dfl_loss") if name in metrics)
    print(f"epoch {epoch}/{metrics['epochs']}  loss: {losses}  held-out: precision {metrics['precision']:.3f}  "
          f"recall {metrics['recall']:.3f}  mAP50 {metrics['map50']:.3f}  ({metrics['seconds']:.0f} s)", flush=True)


def _print_training_report(report, interrupted: bool, not_tuned: str | None = None) -> None:
    if report.stopped_early:
        reason = "by Ctrl+C" if interrupted else "early"
        print(f"stopped {reason} after {report.epochs_run} epoch(s)")
    best = report.history[report.best_epoch - 1] if report.history else {}
    print(f"best epoch: {report.best_epoch} of {report.epochs_run} (held-out box mAP50 {best.get('map50', 0.0):.3f}, "
          f"recall {best.get('recall', 0.0):.3f})")
    thresholds = report.thresholds
    print(f"chosen thresholds: --conf {thresholds.conf:g} --iou {thresholds.iou:g} (held-out box F1 "
          f"{report.after.f1:.3f}, precision {report.after.precision:.3f}, recall {report.after.recall:.3f}; "
          f"before fine-tuning: F1 {report.before.f1:.3f} at --conf 0.4 --iou 0.9)")
    print(f"time per image: {thresholds.scores.seconds_per_image:.3f} s at --imgsz {report.imgsz} "
          f"on {report.card['inference']['device']}")
    filters = report.mask_filters
    flags = ""
    if filters is None:
        print(not_tuned or "mask filters not tuned")
    else:
        flags = _setting_flags(filters.settings())
        after, before = filters.after, filters.before
        print(f"chosen mask filters: {flags or 'none'} ({filters.describe()}; held-out instance F1 {after.f1:.3f}, "
              f"precision {after.precision:.3f}, recall {after.recall:.3f}; without filters: F1 {before.f1:.3f})")
        print(f"time per image, detecting and segmenting everything: {filters.seconds_per_image:.3f} s "
              f"on {report.card['inference']['device']}")
    print(f"wrote {report.path} and its model card {report.card_path} ({report.seconds:.0f} s)")
    print(f"use it: napari-mobilesamv2 segment-everything IMAGE --detector-weights {report.path} "
          f"--imgsz {report.imgsz} --conf {thresholds.conf:g} --iou {thresholds.iou:g}{' ' + flags if flags else ''} "
          "--labels OUT.tif")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
