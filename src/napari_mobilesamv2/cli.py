"""Command line: ``napari-mobilesamv2 segment-everything|segment-anything|models``.

User errors print one line (``error: ...``) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, MobileSAMv2Error, OutputError
from .models.registry import DEFAULT_ENCODER, ENCODERS, WEIGHT_FILES

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-mobilesamv2`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args) or 0
        except MobileSAMv2Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning: ...`` line, without the source location."""
    print(f"warning: {message}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one ``error:`` line and status 2, like every other user error."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-mobilesamv2`` argument parser with its three commands."""
    parser = _Parser(prog="napari-mobilesamv2", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    everything = commands.add_parser("segment-everything", help="find every object in images (MobileSAMv2)")
    everything.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    _add_model_options(everything)
    everything.add_argument("--strategy", choices=("object-aware", "grid"), default="object-aware")
    everything.add_argument("--conf", type=float, default=0.4, help="detector confidence threshold")
    everything.add_argument("--iou", type=float, default=0.9, help="detector NMS IoU threshold")
    everything.add_argument("--imgsz", type=int, default=1024, help="detector input size")
    everything.add_argument("--max-prompts", type=int, default=320, help="at most this many boxes")
    everything.add_argument("--batch-size", type=int,
                            help="boxes decoded at once (default 4 on CPU, 320 on GPU; halved on GPU out-of-memory)")
    everything.add_argument("--points-per-side", type=int, default=32, help="grid strategy: points per side")
    everything.add_argument("--min-predicted-iou", type=float, help="drop masks below this predicted IoU")
    everything.add_argument("--min-stability", type=float, help="drop masks below this stability score")
    everything.add_argument("--min-area", type=int, help="drop masks with fewer pixels")
    everything.add_argument("--stack", action="store_true",
                            help="the image is a stack (Z, Y, X), (T, Y, X), (T, Z, Y, X): segment every plane "
                                 "and give an object one id through neighbouring planes")
    everything.add_argument("--rgb", action="store_true", help="with --stack: the last axis holds RGB channels")
    everything.add_argument("--link-iou", type=float, default=0.5,
                            help="with --stack: least mask IoU for objects of neighbouring planes to share an id")
    _add_output_options(everything)
    everything.set_defaults(run=run_segment_everything)

    anything = commands.add_parser("segment-anything", help="segment the objects given by points and boxes")
    anything.add_argument("image", type=Path)
    _add_model_options(anything, detector=False)
    anything.add_argument("--points", nargs="+", default=[], metavar="X,Y", help="object points (one object each)")
    anything.add_argument("--negative-points", nargs="+", default=[], metavar="X,Y",
                          help="background points (shared by every point object)")
    anything.add_argument("--boxes", nargs="+", default=[], metavar="X0,Y0,X1,Y1", help="boxes (one object each)")
    _add_output_options(anything)
    anything.set_defaults(run=run_segment_anything)

    models = commands.add_parser("models", help="list, download, verify or locate the weights files")
    models.add_argument("action", choices=("list", "download", "verify", "path"))
    models.add_argument("names", nargs="*", help="weights files (default: all)")
    models.set_defaults(run=run_models)
    return parser


def _add_model_options(parser: argparse.ArgumentParser, detector: bool = True) -> None:
    parser.add_argument("--encoder", choices=ENCODERS, default=DEFAULT_ENCODER)
    parser.add_argument("--encoder-weights", type=Path, help="image encoder file you already have")
    parser.add_argument("--decoder-weights", type=Path, help="prompt-guided decoder file you already have")
    if detector:
        parser.add_argument("--detector-weights", type=Path, help="ObjectAwareModel.pt you already have")
        parser.add_argument("--trust-weights", action="store_true",
                            help="allow a detector file of unknown sha256 (a pickle can run code)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-download", action="store_true", help="never download missing weights")
    parser.add_argument("--channel-axis", type=int, help="axis of the image that holds channels")
    parser.add_argument("--channels", type=_channel_list, help="comma-separated channels (at most 3) that feed R,G,B")
    parser.add_argument("--normalization", default="auto",
                        choices=("auto", "percentile", "minmax", "none"), help="intensity mapping to 8 bit")


def _channel_list(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        message = f"expected comma-separated channel numbers such as 0,2, not {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, help="label image to write (.tif); a folder for several images")
    parser.add_argument("--proposals", type=Path, help="COCO results JSON to write; a folder for several images")


def _load_model(args: argparse.Namespace, with_detector: bool):
    from .pipeline import MobileSAMv2

    return MobileSAMv2.from_pretrained(
        args.encoder, encoder_weights=args.encoder_weights, decoder_weights=args.decoder_weights,
        detector_weights=getattr(args, "detector_weights", None), device=args.device,
        trust_weights=getattr(args, "trust_weights", False), download=not args.no_download,
        load_detector=with_detector,
    )


def _conversion(args: argparse.Namespace) -> dict:
    conversion = {"normalization": args.normalization}
    if args.channel_axis is not None:
        conversion["channel_axis"] = args.channel_axis
    if args.channels is not None:
        conversion["channels"] = args.channels
    return conversion


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); check that files exist."""
    images = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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

    images = collect_images(args.images)
    outputs = output_paths(args, images)
    model = _load_model(args, with_detector=args.strategy == "object-aware")
    for image_id, (path, (labels_path, proposals_path)) in enumerate(tqdm(list(zip(images, outputs)),
                                                                          desc="segment everything", unit="image")):
        options = dict(
            strategy=args.strategy, conf=args.conf, iou=args.iou, imgsz=args.imgsz, max_prompts=args.max_prompts,
            batch_size=args.batch_size, points_per_side=args.points_per_side,
            min_predicted_iou=args.min_predicted_iou, min_stability=args.min_stability, min_area=args.min_area,
            **_conversion(args),
        )
        if args.stack:
            count = _segment_stack_file(model, read_image(path), labels_path, proposals_path, args, options)
        else:
            result = model.segment_everything(read_image(path), **options)
            _write_outputs(result, labels_path, proposals_path, image_id)
            count = len(result)
        tqdm.write(f"{path}: {count} objects")
    return 0


def _segment_stack_file(model, stack, labels_path, proposals_path, args, options) -> int:
    """Segment and link a stack; write its nD labels and one proposal list (image_id = plane)."""
    from tqdm.auto import tqdm

    from .export import coco_results, write_json
    from .io import write_labels
    from .stack import segment_stack

    with tqdm(desc="planes", unit="plane", leave=False) as bar:
        def advance(index, total):
            bar.total = total
            bar.update(1)

        link, found = segment_stack(model, stack, rgb=args.rgb, link_iou=args.link_iou, on_plane=advance, **options)
    if labels_path is not None:
        write_labels(labels_path, link.labels)
    if proposals_path is not None:
        global_id = {(int(p), int(i)): int(g) for p, i, g in zip(link.plane, link.local_id, link.global_id)}
        records = []
        for plane, result in enumerate(found):
            for record in coco_results(result, image_id=plane):
                record["id"] = global_id.get((plane, record["id"]), 0)  # 0: hidden by larger objects
                records.append(record)
        write_json(proposals_path, records)
    return link.n_objects


def run_segment_anything(args: argparse.Namespace) -> int:
    from .io import read_image

    points = [_numbers(p, 2, "--points") for p in args.points]
    negative = [_numbers(p, 2, "--negative-points") for p in args.negative_points]
    boxes = [_numbers(b, 4, "--boxes") for b in args.boxes]
    if not points and not boxes:
        raise InputError("give at least one of --points X,Y or --boxes X0,Y0,X1,Y1")
    (labels_path, proposals_path), = output_paths(args, [args.image])
    model = _load_model(args, with_detector=False)
    result = model.segment_anything(
        read_image(args.image), points=points + negative or None,
        point_labels=[1] * len(points) + [0] * len(negative), boxes=boxes or None, **_conversion(args),
    )
    _write_outputs(result, labels_path, proposals_path, 0)
    print(f"{args.image}: {len(result)} objects")
    return 0


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

    names = args.names or list(WEIGHT_FILES)
    unknown = [n for n in names if n not in WEIGHT_FILES]
    if unknown:
        raise InputError(f"unknown weights file(s) {', '.join(unknown)}; known: {', '.join(WEIGHT_FILES)}")
    if args.action == "path":
        print(download.cache_dir() if not args.names else "\n".join(str(download.cached_path(n)) for n in names))
    elif args.action == "list":
        for name in names:
            entry = WEIGHT_FILES[name]
            present = "cached" if download.cached_path(name).is_file() else "missing"
            size = f"{entry.size / 1e6:.0f} MB" if entry.size else "size n/a"
            print(f"{name:32s} {entry.slot:8s} {size:>9s} {present:7s} {entry.description}")
    elif args.action == "download":
        for name in names:
            print(download.fetch(name))
    else:
        failures = 0
        for name in names:
            try:
                print(download.verify(name))
            except MobileSAMv2Error as exc:
                print(f"{name}: {exc}")
                failures += 1
        return 1 if failures else 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
