"""The options objects: one default, range and help per setting, shared by the CLI and the API."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from napari_mobilesamv2.cli import build_parser, options_from_args
from napari_mobilesamv2.errors import InputError
from napari_mobilesamv2.options import (
    EverythingOptions,
    ImageOptions,
    ModelOptions,
    option_info,
    options_of,
)


def test_defaults_are_those_of_the_official_pipeline():
    options = EverythingOptions()
    assert (options.strategy, options.conf, options.iou, options.imgsz, options.max_prompts) == (
        "object-aware", 0.4, 0.9, 1024, 320)
    assert (options.points_per_side, options.link_iou, options.batch_size, options.exact) == (32, 0.5, None, False)
    assert (options.min_predicted_iou, options.min_stability, options.min_area) == (None, None, None)


@pytest.mark.parametrize("cls", [EverythingOptions, ImageOptions, ModelOptions])
def test_the_command_line_defaults_are_the_core_defaults(cls):
    args = build_parser().parse_args(["segment-everything", "image.tif"])
    assert options_from_args(cls, args) == cls()


def test_every_setting_has_a_flag_that_reaches_the_options():
    argv = ["segment-everything", "image.tif", "--strategy", "grid", "--conf", "0.25", "--iou", "0.7",
            "--imgsz", "640", "--max-prompts", "50", "--points-per-side", "16", "--batch-size", "8", "--exact",
            "--min-predicted-iou", "0.5", "--min-stability", "0.8", "--min-area", "20", "--link-iou", "0.3"]
    options = options_from_args(EverythingOptions, build_parser().parse_args(argv))
    assert options == EverythingOptions(
        strategy="grid", conf=0.25, iou=0.7, imgsz=640, max_prompts=50, points_per_side=16, batch_size=8, exact=True,
        min_predicted_iou=0.5, min_stability=0.8, min_area=20, link_iou=0.3,
    )
    flags = {action.dest for action in _everything_parser()._actions}
    assert {info.name for info in options_of(EverythingOptions)} <= flags


def _everything_parser():
    subparsers = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
                      and "segment-everything" in a.choices)
    return subparsers.choices["segment-everything"]


def test_help_shows_every_default():
    text = " ".join(_everything_parser().format_help().split())
    for expected in ("(default: 0.4)", "(default: 0.9)", "(default: 320)", "(default: 1024)", "(default: 32)",
                     "(default: 0.5)", "(default: object-aware)", "(default: efficientvit_l2)", "(default: auto)",
                     "example:"):
        assert expected in text


@pytest.mark.parametrize(
    "values, message",
    [
        ({"conf": 1.5}, "conf must be between 0 and 1, not 1.5"),
        ({"conf": float("nan")}, "conf must be between 0 and 1, not nan"),
        ({"iou": -0.1}, "iou must be between 0 and 1, not -0.1"),
        ({"imgsz": 1000}, "imgsz must be a multiple of 32 from 32 to 4096 (default 1024), not 1000"),
        ({"max_prompts": 0}, "max_prompts must be at least 1, not 0"),
        ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
        ({"points_per_side": 2.5}, "points_per_side must be a whole number, not 2.5"),
        ({"strategy": "random"}, "strategy must be one of object-aware, grid, not 'random'"),
        ({"link_iou": 0}, "link_iou must be above 0 and at most 1, not 0"),
        ({"min_area": -1}, "min_area must be between 0 and"),
        ({"colour": 1}, "unknown setting(s) 'colour'; known settings:"),
    ],
)
def test_bad_values_are_refused_with_the_allowed_range(values, message):
    with pytest.raises(InputError) as error:
        EverythingOptions.from_dict(values)
    assert message in str(error.value)


def test_image_and_model_options_check_their_values():
    with pytest.raises(InputError, match="normalization must be one of auto, percentile"):
        ImageOptions(normalization="zscore")
    with pytest.raises(InputError, match="encoder must be one of efficientvit_l2, tiny_vit"):
        ModelOptions(encoder="vit_g")
    assert ImageOptions(channels=["0", 2]).channels == (0, 2)
    assert ImageOptions(channel_axis=1, channels=(0,)).conversion() == {
        "normalization": "auto", "channel_axis": 1, "channels": (0,)}


def test_settings_the_strategy_does_not_use_are_reported():
    assert EverythingOptions(strategy="grid", conf=0.3, imgsz=512).not_applying() == ["conf", "imgsz"]
    assert EverythingOptions(strategy="grid").not_applying() == []
    assert EverythingOptions(points_per_side=8).not_applying() == ["points_per_side"]
    with pytest.warns(UserWarning, match=r"conf has no effect with strategy 'grid'; it applies to object-aware only"):
        EverythingOptions(strategy="grid", conf=0.3).check_strategy()


def test_replace_checks_like_the_constructor():
    assert EverythingOptions().replace(conf=0.2).conf == 0.2
    with pytest.raises(InputError, match="conf must be between 0 and 1"):
        EverythingOptions().replace(conf=2)


def test_every_option_has_help_and_a_described_default():
    for cls in (EverythingOptions, ImageOptions, ModelOptions):
        for info in options_of(cls):
            assert info.spec.help and info.help_with_default().endswith(")")
    assert option_info(EverythingOptions, "batch_size").describe_default() == "4 boxes on CPU, 320 on GPU, 64 grid points"


def test_installed_console_script_shows_version_and_defaults():
    script = Path(sysconfig.get_path("scripts")) / "napari-mobilesamv2"
    if not script.exists():
        script = Path(sys.executable).parent / "napari-mobilesamv2"
    assert script.exists(), "the napari-mobilesamv2 console script is not installed"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("napari-mobilesamv2 ")
    helped = subprocess.run([str(script), "segment-everything", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "(default: 0.4)" in text and "(default: 0.9)" in text and "(default: 320)" in text
