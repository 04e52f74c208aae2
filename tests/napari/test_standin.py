"""The GUI tests' stand-in has MobileSAMv2's interface: the methods of SegmentationPipeline."""

import inspect
import warnings

import numpy as np
import pytest
from standin import BlobPipeline, blobs

from napari_mobilesamv2 import EverythingOptions, MobileSAMv2, SegmentationPipeline

METHODS = [name for name, value in vars(SegmentationPipeline).items()
           if inspect.isfunction(value) and not name.startswith("_")]


def parameters(function) -> list[tuple]:
    """Name, kind and default of every parameter (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_protocol_holds_what_the_engine_and_napari_call():
    assert sorted(METHODS) == [
        "decode_boxes", "detect", "embed", "prepare_image", "segment_anything", "segment_everything",
        "segment_everything_steps", "segment_prompts",
    ]
    assert "encoder_name" in SegmentationPipeline.__annotations__
    assert isinstance(vars(SegmentationPipeline)["encoder_id"], property)


@pytest.mark.parametrize("implementation", [MobileSAMv2, BlobPipeline])
@pytest.mark.parametrize("method", METHODS)
def test_signatures_match_the_protocol(implementation, method):
    assert parameters(getattr(implementation, method)) == parameters(getattr(SegmentationPipeline, method))


def test_both_pipelines_are_segmentation_pipelines(tiny_pipeline):
    assert isinstance(tiny_pipeline, SegmentationPipeline)
    assert isinstance(BlobPipeline(), SegmentationPipeline)


def test_the_stand_in_takes_options_like_mobilesamv2():
    pipeline = BlobPipeline()
    image = blobs(centres=((20, 20), (40, 60), (50, 15)), radius=6)
    assert len(pipeline.segment_everything(image)) == 3
    assert len(pipeline.segment_everything(image, max_prompts=2)) == 2
    assert len(pipeline.segment_everything(image, EverythingOptions(conf=0.8))) == 1  # scores 0.9, 0.7, 0.5
    grid = pipeline.segment_everything(image, strategy="grid", min_area=200)
    assert grid.strategy == "grid" and len(grid) == 0  # the disks have 113 pixels
    with pytest.warns(UserWarning, match="conf has no effect with strategy 'grid'"):
        pipeline.segment_everything(image, strategy="grid", conf=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steps = pipeline.segment_everything_steps(image, EverythingOptions())
        stages = []
        while True:
            try:
                stages.append(next(steps)[0])
            except StopIteration as done:
                result = done.value
                break
    assert stages == ["embedding", "detecting", "decoding", "assembling"]
    np.testing.assert_array_equal(result.labels, pipeline.segment_everything(image).labels)
