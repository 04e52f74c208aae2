"""Segment everything in folders, stacks and large images on a dask.distributed cluster.

The work of a run is cut into tasks that the workers run with the same code as a
run in one process (:mod:`napari_mobilesamv2.batch`, :mod:`~napari_mobilesamv2.engine`,
:mod:`~napari_mobilesamv2.tiled`):

* an image that fits one pass is one task, which writes its own label image and
  proposals;
* a stack (``stack=True``) is one task per plane, each keeping its plane's objects in
  the run record next to the output; once every plane is done, one more task links
  the ids through the stack and writes the outputs;
* an image larger than a tile is one task per tile for the detector pass, one per
  tile that owns boxes for the decoder pass (the boxes of all tiles are merged on the
  client in between), and a last task that paints and writes the labels; every
  finished tile is kept in the run record.

Only small values travel back to the client (object counts and the tiles' boxes);
label images are written by the workers into the output files, which must therefore
be on a file system every worker and the client share. Ids are numbered per image
and per plane, then linked through a stack, exactly as in one process: the files
are identical to those of a run without a cluster.

A worker that dies has its tasks run again elsewhere (every file is written whole
or not at all). A client that stops continues with ``resume=True`` from the planes
and tiles kept in the run records.

Each worker process builds the models once, from the files named in a
:class:`ModelSpec` (paths, or registry files in the worker's cache folder), and
keeps them for every later task.

``distributed`` is imported only when a cluster is used.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, MobileSAMv2Error
from .options import EverythingOptions, ImageOptions

# Command-line settings of a cluster run, written once here.
SCHEDULER_HELP = ("run on the dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786); the workers "
                  "need this package, the weights and the images and outputs on a shared file system")
WORKERS_HELP = "start a local dask cluster of N worker processes and run on it"
DEFAULT_THREADS_PER_WORKER = 1
THREADS_HELP = (f"with --workers: tasks each worker process runs at a time (default: {DEFAULT_THREADS_PER_WORKER})")
TORCH_THREADS_HELP = ("threads torch computes with in each worker process (default: as many as a run without a "
                      "cluster uses on this machine, which makes the outputs identical to such a run's; another "
                      "number can change the last bits of scores and, rarely, a mask's edge)")
# How long to try to reach a scheduler, and to wait for its first worker.
CONNECT_TIMEOUT_S = 10
WORKER_WAIT_S = 60

Outputs = tuple[Path | None, Path | None]


@dataclass(frozen=True)
class ModelSpec:
    """The models a worker builds: what :meth:`MobileSAMv2.from_pretrained` is given.

    Paths are sent to the workers, not models: each worker reads the files itself, from
    the paths given (on a shared file system) or, for files not given, from its own
    weights cache folder (``NAPARI_MOBILESAMV2_CACHE``).

    `torch_threads` sets the threads torch computes with in each worker process (None:
    the worker's default). Floating-point sums depend on how they are split among
    threads, so a worker gives results bitwise identical to a run without a cluster
    only with the same number of threads as that run (see :func:`in_process_threads`).
    """

    encoder: str
    encoder_weights: str | None = None
    decoder_weights: str | None = None
    detector_weights: str | None = None
    device: str = "auto"
    trust_weights: bool = False
    download: bool = True
    load_detector: bool = True
    torch_threads: int | None = None

    def __post_init__(self):
        for name in ("encoder_weights", "decoder_weights", "detector_weights"):
            value = getattr(self, name)
            if value is not None:  # workers start elsewhere: relative paths would point elsewhere
                object.__setattr__(self, name, str(Path(value).expanduser().resolve()))

    def build(self):
        """The pipeline of these settings (loads the weights; sets torch's threads of this process)."""
        import torch

        from .pipeline import MobileSAMv2

        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)

        return MobileSAMv2.from_pretrained(
            self.encoder, encoder_weights=self.encoder_weights, decoder_weights=self.decoder_weights,
            detector_weights=self.detector_weights, device=self.device, trust_weights=self.trust_weights,
            download=self.download, load_detector=self.load_detector,
        )


def in_process_threads() -> int:
    """The threads torch computes with in this process: what a run without a cluster uses here."""
    import torch

    return torch.get_num_threads()


_MODELS: dict[ModelSpec, Any] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(spec: ModelSpec):
    """The pipeline of `spec` (``spec.build()``), built once per process and kept for later tasks."""
    with _MODELS_LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = spec.build()
        return _MODELS[spec]


# -- connecting -----------------------------------------------------------------------------


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None,
            threads_per_worker: int = DEFAULT_THREADS_PER_WORKER) -> Iterator[Any]:
    """A ``distributed.Client`` of an existing cluster (`scheduler`) or of a new local one (`workers`).

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://127.0.0.1:8786``.
    workers : int, optional
        Start a local cluster of this many worker processes (closed at the end).
    threads_per_worker : int
        Threads of each local worker process.

    Raises
    ------
    InputError
        Both or neither of `scheduler` and `workers`; the scheduler cannot be reached, or has no
        worker after ``WORKER_WAIT_S`` seconds.
    """
    if (scheduler is None) == (workers is None):
        raise InputError("give either a scheduler address (--scheduler) or a number of workers (--workers), not both")
    import distributed

    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError):
            raise InputError(f"could not reach the dask scheduler at {scheduler}: start it with `dask scheduler` "
                             "or check the address") from None
        with client:
            _wait_for_workers(client, scheduler)
            yield client
        return
    if workers < 1 or threads_per_worker < 1:
        raise InputError(f"--workers and --threads-per-worker must be at least 1, not {workers} and "
                         f"{threads_per_worker}")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                  dashboard_address=":0", silence_logs=50) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


def _wait_for_workers(client, address: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise InputError(f"the dask scheduler at {address} has no workers after {WORKER_WAIT_S} s: start some with "
                         f"`dask worker {address}`") from None


def load_models(client, spec: ModelSpec) -> dict:
    """Build the models on every worker now; the first worker's model id and detector settings.

    The warnings of loading (e.g. a trusted detector of unknown sha256) are issued here
    once, not by every worker.

    Raises
    ------
    MobileSAMv2Error
        A worker cannot load the models (e.g. it lacks the weights): one line naming the
        worker and the reason.
    """
    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    futures = [client.submit(_load_on_worker, spec, key=f"load-models-{uuid.uuid4().hex[:8]}", workers=[address],
                             allow_other_workers=True, pure=False) for address in addresses]
    answers = {}
    for address, future in zip(addresses, futures):
        try:
            answers[address] = future.result()
        except Exception as exc:  # noqa: BLE001  any failure of a worker is reported as one line
            raise _worker_error(address, exc) from None
    if not answers:
        raise InputError("the dask cluster has no workers")
    first = next(iter(answers.values()))
    if (client.id, spec) not in _WARNED:  # once per client, not at every call
        _WARNED.add((client.id, spec))
        for category, message in first["warnings"]:
            warnings.warn(message, category, stacklevel=2)
    return first


def _load_on_worker(spec: ModelSpec) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _MODELS_LOCK:
            fresh = spec not in _MODELS
        model = worker_model(spec)
    if fresh:
        _LOAD_WARNINGS[spec] = [(w.category, str(w.message)) for w in caught]
    return {"model_id": model.model_id, "detector_settings": dict(getattr(model, "detector_settings", {}) or {}),
            "warnings": _LOAD_WARNINGS.get(spec, [])}


_LOAD_WARNINGS: dict[ModelSpec, list] = {}
_WARNED: set[tuple[str, ModelSpec]] = set()


def _worker_error(address: str, exc: BaseException) -> MobileSAMv2Error:
    hint = ("give every worker the weights: the same cache folder (NAPARI_MOBILESAMV2_CACHE) or files on a shared "
            "path (--encoder-weights, --decoder-weights, --detector-weights)")
    reason = str(exc).strip().splitlines()[0].rstrip(":") if str(exc).strip() else type(exc).__name__
    message = f"the dask worker {address} cannot load the models: {reason}"
    if not isinstance(exc, MobileSAMv2Error):
        return InputError(f"{message}; {hint}")
    try:
        return type(exc)(f"{message}; {hint}")
    except TypeError:  # an error type with other arguments
        return InputError(f"{message}; {hint}")


# -- the run --------------------------------------------------------------------------------


@dataclass
class _Run:
    """What every task of one run shares."""

    client: Any
    model: ModelSpec
    model_id: str
    options: EverythingOptions
    image_options: ImageOptions
    embeddings: str | None
    resume: bool

    def submit(self, function, *args, name: str):
        return self.client.submit(function, *args, key=f"{name}-{uuid.uuid4().hex[:8]}", pure=False)


Flow = Generator[list, list, int]


def segment_files(
    client,
    model: ModelSpec,
    images: Sequence[str | os.PathLike],
    outputs: Sequence[Outputs],
    options: EverythingOptions = EverythingOptions(),
    image_options: ImageOptions = ImageOptions(),
    *,
    stack: bool = False,
    rgb: bool = False,
    resume: bool = False,
    embeddings: str | os.PathLike | None = None,
    on_task: Callable[[int, int], Any] | None = None,
    on_image: Callable[[Path, int], Any] | None = None,
) -> list[int]:
    """Segment everything in image files on a dask cluster; the workers write the outputs.

    Parameters
    ----------
    client : distributed.Client
        The cluster (see :func:`connect`).
    model : ModelSpec
        The models each worker builds (any picklable, hashable object whose ``build()``
        returns a pipeline will do).
    images : sequence of path-like
        Image files (or zarr stores) on a file system the workers share.
    outputs : sequence of (path or None, path or None)
        Label image and proposals JSON of each image (checked beforehand, e.g. by the
        command line).
    options, image_options : EverythingOptions, ImageOptions
        As for a run in one process.
    stack : bool
        Each file is a stack: segment every plane and link ids through the stack.
    rgb : bool
        With `stack`: the last axis holds RGB channels.
    resume : bool
        Continue from the planes and tiles of an earlier, interrupted run.
    embeddings : path-like, optional
        Embedding cache folder shared by the workers.
    on_task : callable, optional
        ``on_task(done, total)`` after every finished task (the total grows as tiled
        images plan their second pass).
    on_image : callable, optional
        ``on_image(path, n_objects)`` when an image's outputs are written.

    Returns
    -------
    list of int
        Objects found in each image (linked objects for stacks).

    Raises
    ------
    MobileSAMv2Error
        As in one process (the task's error is raised here), or a worker cannot load the models.
    """
    if len(images) != len(outputs):
        raise InputError(f"{len(images)} images but {len(outputs)} outputs")
    loaded = load_models(client, model)
    run = _Run(client, model, loaded["model_id"], options, image_options,
               None if embeddings is None else str(Path(embeddings).resolve()), resume)
    flows = []
    for image_id, (path, (labels, proposals)) in enumerate(zip(images, outputs)):
        if stack:
            flows.append(_stack_flow(run, Path(path), labels, proposals, image_id, rgb))
        else:
            flows.append(_image_flow(run, Path(path), labels, proposals, image_id))
    return _drive(client, flows, images, on_task, on_image)


def _drive(client, flows: list[Flow], images, on_task, on_image) -> list[int]:
    """Run every image's flow of tasks at once; a flow waits for its own batch of tasks only."""
    from distributed import as_completed

    counts: list[int | None] = [None] * len(flows)
    waiting: dict[int, tuple[list, set]] = {}
    owner: dict[Any, int] = {}
    progress = {"done": 0, "total": 0}
    tasks = as_completed(loop=client.loop)

    def advance(index: int, results: list | None) -> None:
        while True:
            try:
                batch = flows[index].send(results)
            except StopIteration as finished:
                counts[index] = finished.value
                if on_image is not None:
                    on_image(Path(images[index]), finished.value)
                return
            if batch:
                break
            results = []
        waiting[index] = (batch, set(batch))
        progress["total"] += len(batch)
        for future in batch:
            owner[future] = index
        tasks.update(batch)
        if on_task is not None:
            on_task(progress["done"], progress["total"])

    for index in range(len(flows)):
        advance(index, None)
    try:
        for future in tasks:
            index = owner.pop(future)
            batch, left = waiting[index]
            _raise_failed(future)
            left.discard(future)
            progress["done"] += 1
            if on_task is not None:
                on_task(progress["done"], progress["total"])
            if not left:
                del waiting[index]
                advance(index, [f.result() for f in batch])
    finally:
        for batch, left in waiting.values():
            for future in left:
                future.cancel()
    return counts


def _raise_failed(future) -> None:
    if future.status != "error":
        return
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        raise InputError(f"the task {future.key} ended the workers that ran it several times (the most "
                         "distributed.scheduler.allowed-failures allows): check the workers' memory and logs") from None
    future.result()  # raises the task's own error


# -- one image ------------------------------------------------------------------------------


def _image_flow(run: _Run, path: Path, labels, proposals, image_id: int) -> Flow:
    from .batch import PlaneRun

    plane_run = PlaneRun(None, path, labels, proposals, image_id, None, run.resume)
    options, tiled = plane_run.plan(run.options)
    if not tiled:
        (count,) = yield [run.submit(_whole_task, run.model, path, labels, proposals, image_id, options,
                                     run.image_options, run.embeddings, name=f"image-{path.stem}")]
        return count
    return (yield from _tiled_flow(run, plane_run, options))


def _whole_task(spec: ModelSpec, path, labels, proposals, image_id, options, image_options, embeddings) -> int:
    from .batch import PlaneRun

    plane_run = PlaneRun(worker_model(spec), path, labels, proposals, image_id, _embedding_cache(embeddings), False)
    return plane_run.whole(options, image_options.conversion())


def _embedding_cache(folder: str | None):
    if folder is None:
        return None
    from .embedding_cache import EmbeddingCache

    return EmbeddingCache(folder)


def _tiled_flow(run: _Run, plane_run, options: EverythingOptions) -> Flow:
    """Detector pass per tile, boxes merged here, decoder pass per owning tile, then the outputs."""
    from .large_io import open_image
    from .tiled import merged_owners, tile_conversion
    from .tiling import tile_grid

    path, conversion = plane_run.path, run.image_options.conversion()
    with open_image(path) as lazy:
        shape = (lazy.height, lazy.width)
        record = plane_run.record(lazy, options, conversion, run.model_id)
        ranged = tile_conversion(lambda rows, cols: lazy[rows, cols], shape, conversion)
    tiles = tile_grid(shape, options.tile, options.overlap)
    found = {tile.index: record.boxes((), tile.index) for tile in tiles}
    todo = [tile for tile in tiles if found[tile.index] is None]
    detected = yield [run.submit(_detect_task, run.model, path, shape, tile, options, ranged, record,
                                 name=f"detect-{path.stem}-tile{tile.index}") for tile in todo]
    found.update({tile.index: boxes for tile, boxes in zip(todo, detected)})
    merged, owner = merged_owners(tiles, [found[tile.index] for tile in tiles], shape, options)
    owning = [tile for tile in tiles if (owner == tile.index).any() and record.masks((), tile.index) is None]
    yield [run.submit(_decode_task, run.model, path, tile, merged.boxes_xyxy[owner == tile.index], options, ranged,
                      record, run.embeddings, name=f"decode-{path.stem}-tile{tile.index}") for tile in owning]
    (count,) = yield [run.submit(_finish_tiled_task, run.model, path, plane_run.labels_path,
                                 plane_run.proposals_path, plane_run.image_id, options, conversion, run.embeddings,
                                 name=f"labels-{path.stem}")]
    return count


def _detect_task(spec: ModelSpec, path, shape, tile, options, conversion, record):
    from .large_io import open_image
    from .tiled import detect_tile

    with open_image(path) as lazy:
        boxes, scores = detect_tile(worker_model(spec), lambda rows, cols: lazy[rows, cols], shape, tile, options,
                                    conversion)
    record.save_boxes((), tile.index, boxes, scores)
    return boxes, scores


def _decode_task(spec: ModelSpec, path, tile, boxes_xyxy, options, conversion, record, embeddings) -> int:
    from .large_io import open_image
    from .tiled import decode_tile

    with open_image(path) as lazy:
        masks = decode_tile(worker_model(spec), lambda rows, cols: lazy[rows, cols], tile, boxes_xyxy, options,
                            conversion, embeddings=_embedding_cache(embeddings))
    record.save_masks((), tile.index, masks)
    return len(masks.crops)


def _finish_tiled_task(spec: ModelSpec, path, labels, proposals, image_id, options, conversion, embeddings) -> int:
    """The run of one process over a record that holds every tile: it reads them back, paints and writes."""
    from .batch import PlaneRun
    from .large_io import open_image

    plane_run = PlaneRun(worker_model(spec), path, labels, proposals, image_id, _embedding_cache(embeddings),
                         resume=True)
    return plane_run.tiled(open_image(path), options, conversion)


# -- one stack ------------------------------------------------------------------------------

PLANE_KIND = "plane"


def _stack_flow(run: _Run, path: Path, labels, proposals, image_id: int, rgb: bool) -> Flow:
    from . import engine
    from .batch import file_identity
    from .resume import RunRecord, record_folder

    conversion = run.image_options.conversion()
    stack = _open_stack(path)
    stack_shape, _ = engine.array_plane_reader(stack, 3 if rgb else 2)
    identity = {"image": file_identity(path, stack), "options": run.options.to_dict(), "conversion": conversion,
                "models": run.model_id, "stack": True, "rgb": rgb}
    _close(stack)
    record = RunRecord(record_folder(labels or proposals), identity, resume=run.resume)
    keys = engine.stack_keys(stack_shape)
    todo = [key for key in keys if record.arrays(key, 0, PLANE_KIND) is None]
    yield [run.submit(_plane_task, run.model, path, rgb, key, run.options, conversion, record,
                      name=f"plane-{path.stem}-{'-'.join(map(str, key))}") for key in todo]
    (count,) = yield [run.submit(_link_task, run.model, path, rgb, stack_shape, run.options, conversion, record,
                                 labels, proposals, name=f"link-{path.stem}")]
    return count


def _open_stack(path: Path):
    """The stack read lazily when its format allows, else whole."""
    from .io import read_image
    from .large_io import open_image

    try:
        return open_image(path)
    except (MobileSAMv2Error, OSError, ValueError):
        return read_image(path)


def _close(stack) -> None:
    if hasattr(stack, "close"):
        stack.close()


def _plane_task(spec: ModelSpec, path, rgb, key, options, conversion, record) -> int:
    from . import engine

    stack = _open_stack(Path(path))
    try:
        _, read_plane = engine.array_plane_reader(stack, 3 if rgb else 2)
        (result,) = engine.run(engine.segment_planes(worker_model(spec), [key], read_plane, options, conversion))
    finally:
        _close(stack)
    record.save_arrays(key, 0, PLANE_KIND, **segmentation_arrays(result))
    return len(result)


def _link_task(spec: ModelSpec, path, rgb, stack_shape, options, conversion, record, labels, proposals) -> int:
    """Fill the gaps of the finished planes (as the in-process run does), link them and write the outputs."""
    from . import engine
    from .batch import write_stack_outputs

    planes = [segmentation_from_arrays(record.arrays(key, 0, PLANE_KIND)) for key in engine.stack_keys(stack_shape)]
    if options.fill_gaps:
        stack = _open_stack(Path(path))
        try:
            _, read_plane = engine.array_plane_reader(stack, 3 if rgb else 2)
            planes = engine.run(engine.fill_gap_steps(worker_model(spec), stack_shape, read_plane, planes, options,
                                                      conversion))
        finally:
            _close(stack)
    found = engine.link_stack(planes, stack_shape, options)
    write_stack_outputs(found, labels, proposals)
    record.discard()
    return found.link.n_objects


def segmentation_arrays(result) -> dict:
    """A :class:`~napari_mobilesamv2.results.Segmentation` as named arrays (see :func:`segmentation_from_arrays`)."""
    import numpy as np

    crops = result.crops
    arrays = {
        "labels": result.labels, "boxes_xyxy": result.boxes_xyxy, "score": result.score,
        "predicted_iou": result.predicted_iou, "stability": result.stability, "visible_area": result.visible_area,
        "strategy": np.array(result.strategy),
        "top": np.array([c.top for c in crops], np.int64), "left": np.array([c.left for c in crops], np.int64),
        "shape": np.array([c.shape for c in crops], np.int64).reshape(-1, 2),
        "area": np.array([c.area for c in crops], np.int64),
        "nbytes": np.array([c.packed.size for c in crops], np.int64),
        "bits": np.concatenate([c.packed for c in crops] + [np.zeros(0, np.uint8)]),
    }
    if result.tile is not None:
        arrays["tile"] = result.tile
    return arrays


def segmentation_from_arrays(arrays: dict):
    """The :class:`~napari_mobilesamv2.results.Segmentation` that :func:`segmentation_arrays` gave."""
    import numpy as np

    from .decode.masks import MaskCrop
    from .results import Segmentation

    ends = np.cumsum(arrays["nbytes"])
    crops = [MaskCrop.from_packed(top, left, shape, arrays["bits"][end - size:end], area)
             for top, left, shape, size, end, area in zip(arrays["top"], arrays["left"], arrays["shape"],
                                                          arrays["nbytes"], ends, arrays["area"])]
    return Segmentation(arrays["labels"], crops, arrays["boxes_xyxy"], arrays["score"], arrays["predicted_iou"],
                        arrays["stability"], arrays["visible_area"], str(arrays["strategy"]), tile=arrays.get("tile"))
