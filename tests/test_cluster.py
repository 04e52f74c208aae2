"""Runs on a real dask cluster of worker processes give the files of a run in one process.

The cluster is a `dask scheduler` and two `dask worker --nthreads 1 --no-nanny` processes
started from this environment, as a user starts them. The pipeline is the small
random-weight one (`cluster_models.TinyRecipe`), built by each worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_mobilesamv2 import cli, cluster
from napari_mobilesamv2.batch import PlaneRun
from napari_mobilesamv2.cli import main
from napari_mobilesamv2.errors import InputError
from napari_mobilesamv2.io import read_image
from napari_mobilesamv2.options import EverythingOptions, ImageOptions

from .cluster_models import TinyRecipe
from .conftest import DETECTOR_FIXTURE, synthetic_cells, write_weight_files

ROOT = Path(__file__).resolve().parents[1]
FAST = EverythingOptions(imgsz=256, max_prompts=12)
TILED = EverythingOptions(tile=256, overlap=64, imgsz=256, max_prompts=12)


def _dask(*args: str, env: dict, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "dask"), *args]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """(address, client, worker processes) of a scheduler and two single-thread workers without nanny."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "NAPARI_MOBILESAMV2_CACHE": str(folder / "empty_cache")}
    scheduler_file = folder / "scheduler.json"
    processes = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                       "--scheduler-file", str(scheduler_file), env=env, log=folder / "scheduler.log")]
    try:
        for _ in range(600):
            if scheduler_file.is_file() and scheduler_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        processes += [_dask("worker", address, "--nthreads", "1", "--no-nanny", env=env, log=folder / f"worker{i}.log")
                      for i in range(2)]
        with Client(address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            yield address, client, processes[1:]
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def recipe(dask_cluster):
    """The small pipeline, built on every worker before the tests that use it."""
    recipe = TinyRecipe(torch_threads=cluster.in_process_threads())
    cluster.load_models(dask_cluster[1], recipe)
    return recipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    for i in range(2):
        tifffile.imwrite(images / f"cells{i}.tif", synthetic_cells((120, 160), n=8, seed=i, dtype=np.uint16))
    return images


def _outputs(folder: Path, images: list[Path]) -> list[tuple[Path, Path]]:
    folder.mkdir(exist_ok=True)
    return [(folder / f"{p.stem}_labels.tif", folder / f"{p.stem}_proposals.json") for p in images]


def _assert_same_files(expected: list[tuple[Path, Path]], found: list[tuple[Path, Path]]) -> None:
    for (labels_a, proposals_a), (labels_b, proposals_b) in zip(expected, found):
        a, b = _read_labels(labels_a), _read_labels(labels_b)
        assert a.dtype == b.dtype == np.int32
        np.testing.assert_array_equal(a, b)
        assert json.loads(proposals_a.read_text()) == json.loads(proposals_b.read_text())


def _read_labels(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path), mode="r")) if path.suffix == ".zarr" else tifffile.imread(path)


def _in_process(model, images, outputs, options) -> list[int]:
    return [PlaneRun(model, path, labels, proposals, i, None, False).segment(options, ImageOptions())
            for i, (path, (labels, proposals)) in enumerate(zip(images, outputs))]


def test_a_folder_on_the_cluster_gives_the_files_of_one_process(dask_cluster, recipe, tiny_pipeline, folder, tmp_path):
    _, client, _ = dask_cluster
    images = sorted(folder.iterdir())
    expected, found = _outputs(tmp_path / "one", images), _outputs(tmp_path / "cluster", images)
    counts = _in_process(tiny_pipeline, images, expected, FAST)
    progress, written = [], []
    assert cluster.segment_files(client, recipe, images, found, FAST, on_task=lambda d, t: progress.append((d, t)),
                                 on_image=lambda path, n: written.append(path)) == counts
    _assert_same_files(expected, found)
    assert progress[-1] == (2, 2) and sorted(written) == images


def test_a_stack_is_segmented_plane_by_plane_and_linked_like_one_process(dask_cluster, recipe, tiny_pipeline, tmp_path):
    _, client, _ = dask_cluster
    plane = synthetic_cells((96, 128), n=6, seed=0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([plane, plane, plane[::-1]]))
    expected, found = _outputs(tmp_path / "one", [path]), _outputs(tmp_path / "cluster", [path])
    count = cli._segment_stack_file(tiny_pipeline, read_image(path), *expected[0], False, FAST, ImageOptions())
    tasks = []
    assert cluster.segment_files(client, recipe, [path], found, FAST, stack=True,
                                 on_task=lambda d, t: tasks.append(t)) == [count]
    _assert_same_files(expected, found)
    assert tasks[-1] == 3 + 1  # one task per plane, then the linking
    assert not Path(f"{found[0][0]}.run").exists()


def test_a_large_image_is_segmented_tile_by_tile_like_one_process(dask_cluster, recipe, tiny_pipeline, tmp_path):
    _, client, _ = dask_cluster
    path = tmp_path / "mosaic.tif"
    tifffile.imwrite(path, synthetic_cells((400, 440), n=24, seed=4, dtype=np.uint16), tile=(256, 256))
    outputs = [(tmp_path / "one.zarr", tmp_path / "one.json")]
    found = [(tmp_path / "cluster.zarr", tmp_path / "cluster.json")]
    counts = _in_process(tiny_pipeline, [path], outputs, TILED)
    tasks = []
    assert cluster.segment_files(client, recipe, [path], found, TILED, on_task=lambda d, t: tasks.append(t)) == counts
    _assert_same_files(outputs, found)
    # 2 x 2 detector tiles, the tiles that decode boxes, the labels
    assert 4 + 1 < tasks[-1] <= 4 + 4 + 1
    assert not (tmp_path / "cluster.zarr.run").exists()


def test_an_interrupted_client_resumes_a_stack_from_its_record(dask_cluster, recipe, tiny_pipeline, tmp_path):
    _, client, _ = dask_cluster
    plane = synthetic_cells((96, 128), n=6, seed=2)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([plane, plane[::-1], plane[:, ::-1]]))
    expected, found = _outputs(tmp_path / "one", [path]), _outputs(tmp_path / "cluster", [path])
    count = cli._segment_stack_file(tiny_pipeline, read_image(path), *expected[0], False, FAST, ImageOptions())

    def interrupt(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cluster.segment_files(client, recipe, [path], found, FAST, stack=True, on_task=interrupt)
    record = Path(f"{found[0][0]}.run")
    assert len(list(record.glob("plane-*.npz"))) >= 1 and not found[0][0].exists()
    tasks = []
    assert cluster.segment_files(client, recipe, [path], found, FAST, stack=True, resume=True,
                                 on_task=lambda d, t: tasks.append(t)) == [count]
    assert tasks[-1] < 3 + 1  # the planes in the record are not segmented again
    _assert_same_files(expected, found)
    assert not record.exists()


def test_the_command_line_on_a_scheduler_writes_the_labels_of_a_run_without_it(dask_cluster, sam_decoder, tmp_path):
    address, _, _ = dask_cluster
    encoder, decoder = write_weight_files(tmp_path, sam_decoder, seed=20)
    image = tmp_path / "images"
    image.mkdir()
    tifffile.imwrite(image / "cells.tif", synthetic_cells((96, 128), n=6, seed=1, dtype=np.uint16))
    common = ["segment-everything", str(image / "cells.tif"), "--encoder", "tiny_vit", "--encoder-weights",
              str(encoder), "--decoder-weights", str(decoder), "--detector-weights", str(DETECTOR_FIXTURE),
              "--trust-weights", "--device", "cpu", "--no-download", "--imgsz", "256", "--max-prompts", "8"]
    assert main([*common, "--labels", str(tmp_path / "one.tif"), "--proposals", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--labels", str(tmp_path / "cluster.tif"), "--proposals", str(tmp_path / "cluster.json"),
                 "--scheduler", address]) == 0
    _assert_same_files([(tmp_path / "one.tif", tmp_path / "one.json")],
                       [(tmp_path / "cluster.tif", tmp_path / "cluster.json")])


def test_a_local_cluster_of_worker_processes_gives_the_same_files(tiny_pipeline, folder, tmp_path):
    images = sorted(folder.iterdir())
    expected, found = _outputs(tmp_path / "one", images), _outputs(tmp_path / "cluster", images)
    counts = _in_process(tiny_pipeline, images, expected, FAST)
    with cluster.connect(workers=2, threads_per_worker=1) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.dashboard_link.startswith("http://")
        assert cluster.segment_files(client, TinyRecipe(torch_threads=cluster.in_process_threads()), images, found,
                                     FAST) == counts
    _assert_same_files(expected, found)


def test_workers_without_the_weights_give_one_line(dask_cluster, folder, tmp_path, capsys):
    address, _, _ = dask_cluster  # the workers' weights cache folder is empty
    code = main(["segment-everything", str(folder / "cells0.tif"), "--labels", str(tmp_path / "out.tif"),
                 "--no-download", "--device", "cpu", "--scheduler", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_USER_ERROR
    assert err[-1].startswith("error: the dask worker tcp://127.0.0.1:") and "cannot load the models" in err[-1]
    assert "NAPARI_MOBILESAMV2_CACHE" in err[-1] and len([line for line in err if line.startswith("error")]) == 1


def test_a_bad_scheduler_address_gives_one_line(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    code = main(["segment-everything", str(folder / "cells0.tif"), "--labels", str(tmp_path / "out.tif"),
                 "--scheduler", "tcp://127.0.0.1:9"])
    assert code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == (
        "error: could not reach the dask scheduler at tcp://127.0.0.1:9: start it with `dask scheduler` or check "
        "the address")


def test_scheduler_and_workers_exclude_each_other(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["segment-everything", str(folder / "cells0.tif"), "--labels", str(tmp_path / "out.tif"),
              "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"])
    assert exited.value.code == cli.EXIT_USER_ERROR
    assert "--workers: not allowed with argument --scheduler" in capsys.readouterr().err
    with pytest.raises(InputError, match="not both"):
        with cluster.connect("tcp://127.0.0.1:9", 2):
            pass


def test_a_run_survives_a_worker_killed_during_it(dask_cluster, tiny_pipeline, folder, tmp_path):
    """Last of the module: it leaves one worker."""
    _, client, workers = dask_cluster
    slow = TinyRecipe(delay=1.5, torch_threads=cluster.in_process_threads())
    images = sorted(folder.iterdir()) * 2  # the same files under other output names
    expected = [(tmp_path / f"one{i}.tif", tmp_path / f"one{i}.json") for i in range(len(images))]
    found = [(tmp_path / f"cluster{i}.tif", tmp_path / f"cluster{i}.json") for i in range(len(images))]
    counts = _in_process(tiny_pipeline, images, expected, FAST)
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker(done: int, total: int) -> None:
        if done >= 1 and not killed:
            busy = [address for address, keys in client.processing().items() if keys] or sorted(pids)
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])

    assert cluster.segment_files(client, slow, images, found, FAST, on_task=kill_a_busy_worker) == counts
    assert killed and sum(w.poll() is not None for w in workers) == 1
    _assert_same_files(expected, found)
