"""The on-disk embedding cache: keys, exact round trips, corrupt and interrupted entries, folders."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mobilesamv2.embedding import ImageEmbedding
from napari_mobilesamv2.embedding_cache import (
    FORMAT_VERSION,
    EmbeddingCache,
    EmbeddingKey,
    embedding_key,
    module_fingerprint,
)
from napari_mobilesamv2.errors import InputError, OutputError

WEIGHTS = "ab" * 32


def random_image(seed: int = 0, shape=(40, 60)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def random_embedding(seed: int = 0, original_size=(40, 60)) -> ImageEmbedding:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn((1, 128, 8, 8), generator=generator, dtype=torch.float32)
    return ImageEmbedding(features, (683, 1024), original_size)


def key_of(image: np.ndarray, **kwargs) -> EmbeddingKey:
    return embedding_key(image, encoder_name=kwargs.pop("encoder_name", "tiny_vit"),
                         weights_sha256=kwargs.pop("weights_sha256", WEIGHTS), **kwargs)


def assert_same(a: ImageEmbedding, b: ImageEmbedding) -> None:
    assert a.features.dtype == b.features.dtype == torch.float32
    assert a.features.shape == b.features.shape
    assert torch.equal(a.features.view(torch.int32), b.features.view(torch.int32))  # bitwise, NaN-safe
    assert a.input_size == b.input_size
    assert a.original_size == b.original_size


def entry_dir(cache: EmbeddingCache, key: EmbeddingKey) -> Path:
    return cache.folder / key.digest


def chunk_files(cache: EmbeddingCache, key: EmbeddingKey) -> list[Path]:
    return sorted(p for p in (entry_dir(cache, key) / "c").rglob("*") if p.is_file())


def get_with_one_warning(cache: EmbeddingCache, key: EmbeddingKey, what: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cache.get(key)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert str(cache.folder) in messages[0] and what in messages[0] and "\n" not in messages[0]
    return result


# --- keys -------------------------------------------------------------------


def test_key_holds_content_model_geometry_and_version():
    image = random_image()
    key = key_of(image, plane=(2,), tile=(0, 1024, 40, 1084))
    assert key.image_shape == (40, 60)
    assert key.encoder_name == "tiny_vit" and key.weights_sha256 == WEIGHTS
    assert key.plane == (2,) and key.tile == (0, 1024, 40, 1084)
    assert key.format_version == FORMAT_VERSION
    assert len(key.pixels_sha256) == 64 and len(key.digest) == 64
    assert json.loads(key.to_json())["tile"] == [0, 1024, 40, 1084]
    assert key == key_of(image.copy(), plane=(2,), tile=(0, 1024, 40, 1084))
    # a non-contiguous view with the same pixels is the same content
    assert key_of(np.asfortranarray(image)).pixels_sha256 == key.pixels_sha256


def test_key_changes_with_pixels_encoder_weights_tile_plane_and_shape():
    image = random_image()
    base = key_of(image)
    edited = image.copy()
    edited[5, 7, 1] ^= 1
    others = [
        key_of(edited),
        key_of(image, encoder_name="efficientvit_l2"),
        key_of(image, weights_sha256="cd" * 32),
        key_of(image, tile=(0, 0, 40, 60)),
        key_of(image, tile=(0, 0, 40, 61)),
        key_of(image, plane=(0,)),
        key_of(image, plane=(1,)),
        key_of(image.reshape(60, 40, 3)),  # same bytes, other shape
    ]
    digests = {base.digest} | {k.digest for k in others}
    assert len(digests) == len(others) + 1


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.zeros((4, 4), np.uint8), {}, "(H, W, 3) uint8"),
        (np.zeros((4, 4, 3), np.float32), {}, "(H, W, 3) uint8"),
        (np.zeros((4, 4, 3), np.uint8), {"tile": (0, 0, 0, 4)}, "0 <= y0 < y1"),
        (np.zeros((4, 4, 3), np.uint8), {"tile": (0, 0, 4)}, "(y0, x0, y1, x1)"),
        (np.zeros((4, 4, 3), np.uint8), {"plane": (-1,)}, "non-negative integers"),
        (np.zeros((4, 4, 3), np.uint8), {"encoder_name": ""}, "encoder's name"),
        (np.zeros((4, 4, 3), np.uint8), {"weights_sha256": ""}, "weights' sha256"),
    ],
)
def test_key_rejects_malformed_input(image, kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        key_of(image, **kwargs)


# --- round trip -------------------------------------------------------------


def test_round_trip_is_bitwise_exact(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    image = random_image()
    key = key_of(image)
    stored = random_embedding()
    stored.features[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-45])
    assert cache.get(key) is None and key not in cache
    cache.put(key, stored)
    assert key in cache
    loaded = cache.get(key)
    assert_same(loaded, stored)
    # a new cache object on the same folder (another session) reads it too
    assert_same(EmbeddingCache(tmp_path / "cache").get(key), stored)
    assert cache.size_bytes() >= stored.features.numel() * 4


def test_get_or_compute_computes_once(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    calls = []

    def compute():
        calls.append(1)
        return random_embedding(seed=len(calls))

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1
    assert_same(second, first)


def test_other_keys_miss_and_clear_empties(tmp_path):
    cache = EmbeddingCache(tmp_path)
    image = random_image()
    cache.put(key_of(image), random_embedding())
    assert cache.get(key_of(image, weights_sha256="cd" * 32)) is None
    assert cache.get(key_of(image, tile=(0, 0, 40, 60))) is None
    assert cache.size_bytes() > 0
    cache.clear()
    assert key_of(image) not in cache and cache.get(key_of(image)) is None
    assert [p.name for p in tmp_path.iterdir()] == ["zarr.json"]


def test_put_replaces_entry_of_same_key(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding(seed=1))
    cache.put(key, random_embedding(seed=2))
    assert_same(cache.get(key), random_embedding(seed=2))


def test_put_rejects_features_that_do_not_fit(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    half = random_embedding()
    half = ImageEmbedding(half.features.half(), half.input_size, half.original_size)
    with pytest.raises(InputError, match="float32"):
        cache.put(key, half)
    with pytest.raises(InputError, match="original size"):
        cache.put(key, random_embedding(original_size=(41, 60)))
    assert key not in cache


def test_threads_share_the_cache(tmp_path):
    cache = EmbeddingCache(tmp_path)
    keys = [key_of(random_image(seed)) for seed in range(6)]
    errors = []

    def work(offset):
        try:
            for i in range(len(keys)):
                k = keys[(i + offset) % len(keys)]
                got = cache.get_or_compute(k, lambda: random_embedding(seed=keys.index(k)))
                assert_same(got, random_embedding(seed=keys.index(k)))
        except Exception as exc:  # noqa: BLE001  reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(k in cache for k in keys)


# --- corrupt and interrupted entries ------------------------------------------


def recompute_and_check(cache, key, what):
    """A corrupt entry: warned about, removed, recomputed, and the recomputed one cached."""
    assert get_with_one_warning(cache, key, what) is None
    assert not entry_dir(cache, key).exists()
    fresh = random_embedding(seed=9)
    assert_same(cache.get_or_compute(key, lambda: fresh), fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(cache.get(key), fresh)


def test_flipped_bytes_in_a_chunk_are_detected(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding())
    chunk = chunk_files(cache, key)[1]
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x40
    chunk.write_bytes(bytes(raw))
    recompute_and_check(cache, key, "sha256")


def test_deleted_chunk_is_detected(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding())
    assert len(chunk_files(cache, key)) == 2  # 128 channels in chunks of 64
    chunk_files(cache, key)[0].unlink()
    recompute_and_check(cache, key, "sha256")


def test_truncated_chunk_is_detected(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding())
    chunk = chunk_files(cache, key)[0]
    chunk.write_bytes(chunk.read_bytes()[:1000])
    recompute_and_check(cache, key, "unreadable data")


def edit_attributes(cache, key, edit):
    meta_path = entry_dir(cache, key) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, what",
    [
        (lambda m: m["attributes"]["key"].update(encoder_name="efficientvit_l2"), "another image or model"),
        (lambda m: m["attributes"]["key"].update(pixels_sha256="0" * 64), "another image or model"),
        (lambda m: m["attributes"].update(sha256="0" * 64), "sha256"),
        (lambda m: m["attributes"].update(original_size=[41, 60]), "original size"),
        (lambda m: m["attributes"].update(input_size=[0, 1024]), "malformed"),
        (lambda m: m["attributes"].pop("input_size"), "lacks the attributes input_size"),
        (lambda m: m.update(data_type="float64"), "float32"),
        (lambda m: m.update(shape=[1, 128, 8, 4]), "shape"),
        (lambda m: m.update(node_type="banana"), "unreadable metadata"),
    ],
)
def test_edited_attributes_are_detected(tmp_path, edit, what):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding())
    edit_attributes(cache, key, edit)
    recompute_and_check(cache, key, what)


def test_garbage_metadata_is_detected(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding())
    (entry_dir(cache, key) / "zarr.json").write_text("{not json")
    assert key not in cache
    recompute_and_check(cache, key, "unreadable metadata")


def test_entry_of_another_image_under_this_name_is_not_used(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key, other = key_of(random_image(0)), key_of(random_image(1))
    cache.put(other, random_embedding())
    shutil.copytree(entry_dir(cache, other), entry_dir(cache, key))
    recompute_and_check(cache, key, "another image or model")
    assert_same(cache.get(other), random_embedding())


def test_entry_without_completion_marker_is_never_read(tmp_path):
    """A write killed between the data and the marker leaves an entry that is not used."""
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())
    cache.put(key, random_embedding())
    edit_attributes(cache, key, lambda m: m["attributes"].pop("complete"))
    assert key not in cache
    recompute_and_check(cache, key, "no completion marker")


def test_write_killed_before_rename_leaves_no_entry(tmp_path, monkeypatch):
    """A process killed mid-write leaves only a temporary, which no lookup reads and a later open removes."""
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, random_embedding())
    monkeypatch.undo()
    assert key not in cache and cache.get(key) is None
    # a temporary left by a process that died (its cleanup never ran) is removed once stale
    leftover = tmp_path / f"tmp-{key.digest}-1-deadbeef"
    leftover.mkdir()
    (leftover / "zarr.json").write_text("{}")
    EmbeddingCache(tmp_path)
    assert leftover.exists()  # may belong to a live writer
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    EmbeddingCache(tmp_path)
    assert not leftover.exists()


# --- folders ------------------------------------------------------------------


def test_folder_below_a_file_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"cannot create the embedding cache folder .*file.*; choose another folder"):
        EmbeddingCache(blocker / "cache")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied; choose another folder"):
            EmbeddingCache(folder)
    finally:
        folder.chmod(0o700)


def test_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    """The same refusal as above, for runs as root (which may write anywhere)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=r"cannot write to the embedding cache folder .*permission denied; choose"):
        EmbeddingCache(tmp_path)


def test_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds other files and is not an embedding cache; choose an empty"):
        EmbeddingCache(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_full_disk_is_an_output_error_and_leaves_nothing(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    key = key_of(random_image())

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(OutputError, match="No space left on device; free some space or choose another cache folder"):
        cache.put(key, random_embedding())
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["zarr.json"]


# --- fingerprints ---------------------------------------------------------------


def test_fingerprint_is_stable_and_sensitive():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    first = module_fingerprint(module)
    assert len(first) == 64 and first == module_fingerprint(module)
    torch.manual_seed(0)
    assert module_fingerprint(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))) == first
    with torch.no_grad():
        module[0].weight[0, 0, 0, 0] = torch.nextafter(module[0].weight[0, 0, 0, 0], torch.tensor(1.0))
    changed_weight = module_fingerprint(module)
    assert changed_weight != first
    module[1].running_mean += 1  # a buffer changes the output too
    assert module_fingerprint(module) != changed_weight
    assert module_fingerprint(module.double()) != module_fingerprint(module.float())


def test_fingerprint_of_a_real_encoder(capsys):
    from napari_mobilesamv2.models import build_image_encoder

    torch.manual_seed(0)
    encoder = build_image_encoder("tiny_vit")
    count = sum(p.numel() for p in encoder.parameters())
    start = time.perf_counter()
    fingerprint = module_fingerprint(encoder)
    seconds = time.perf_counter() - start
    assert fingerprint == module_fingerprint(encoder)
    with capsys.disabled():
        print(f"\nmodule_fingerprint(tiny_vit, {count / 1e6:.1f}M parameters): {seconds * 1000:.0f} ms")
