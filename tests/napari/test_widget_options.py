"""The Segment everything dock offers every setting of the command line, as the core defines it."""

import warnings

import numpy as np
import pytest
from magicgui.widgets import Container
from standin import blobs

from napari_mobilesamv2 import EverythingOptions, ImageOptions, ModelOptions
from napari_mobilesamv2.napari._options_form import QT_INT_MAX, option_value
from napari_mobilesamv2.options import STRATEGIES, options_of

EVERYTHING = {info.name: info for info in options_of(EverythingOptions)}
OBJECT_AWARE_ONLY = ["conf", "iou", "imgsz", "max_prompts", "exact"]


def controls_of(container: Container) -> dict:
    """The named controls anywhere inside `container` (through nested containers), by name."""
    found = {}
    for child in container:
        if isinstance(child, Container):
            found.update(controls_of(child))
        elif child.name:
            found[child.name] = child
    return found


def shown(control, dock) -> bool:
    """Whether `control` shows when `dock` does (the test viewer's window is hidden)."""
    return control.native.isVisibleTo(dock.native)


@pytest.fixture
def dock(docked):
    """The dock on a 3-plane stack (a 2D image hides the scope and link IoU: they do not apply)."""
    return docked(image=np.stack([blobs()] * 3))[1]


def test_every_option_has_a_control_with_the_cores_default_and_help(dock):
    controls = controls_of(dock)
    assert set(EVERYTHING) <= set(controls)
    for name, info in EVERYTHING.items():
        control = controls[name]
        assert control.tooltip == info.help_with_default(), name
        assert option_value(info, control) == info.default, name
        if info.spec.choices is not None:
            assert tuple(control.choices) == info.spec.choices, name


@pytest.mark.parametrize("name", [n for n, i in EVERYTHING.items() if i.type in (int, float)])
def test_number_controls_give_exactly_the_cores_range(dock, name):
    info, control = EVERYTHING[name], controls_of(dock)[name]
    spec = info.spec
    assert control.max == min(spec.maximum or QT_INT_MAX, QT_INT_MAX)
    control.value = control.min
    lowest = option_value(info, control)
    if info.optional:  # the bottom of the box means "unset"; one step up is the core's minimum
        assert lowest is None
        control.value = control.min + control.step
        lowest = option_value(info, control)
    if spec.minimum_exclusive:
        assert spec.minimum < lowest <= spec.minimum + 0.01
    else:
        assert lowest == spec.minimum
    for value in (lowest, control.max):
        others = {"overlap": 0} if name == "tile" else {}  # the overlap must stay below half the tile
        EverythingOptions(**{name: value}, **others)  # the core accepts both ends
    if spec.multiple_of:
        assert control.step == spec.multiple_of


def test_every_option_shows_for_its_strategies_and_scope(dock):
    controls = controls_of(dock)
    dock.show_advanced.value = True
    dock.scope.value = "stack"
    for name, info in EVERYTHING.items():
        for strategy in STRATEGIES:
            dock.strategy.value = strategy
            assert shown(controls[name], dock) == (strategy in info.spec.strategies), (name, strategy)


def test_advanced_settings_and_link_iou_show_on_demand(dock):
    controls = controls_of(dock)
    advanced = list(dock.advanced.controls)
    assert advanced == ["imgsz", "batch_size", "exact", "min_predicted_iou", "min_stability", "min_area", "tile",
                        "overlap"]
    assert not any(shown(controls[name], dock) for name in [*advanced, "link_iou"])
    assert all(shown(controls[name], dock) for name in ["strategy", "conf", "iou", "max_prompts"])
    dock.show_advanced.value = True
    assert all(shown(controls[name], dock) for name in advanced)
    dock.scope.value = "stack"
    assert shown(controls["link_iou"], dock)


def test_grid_hides_the_detector_settings_and_shows_points_per_side(dock):
    controls = controls_of(dock)
    dock.show_advanced.value = True
    assert not shown(controls["points_per_side"], dock)
    dock.strategy.value = "grid"
    assert [name for name in OBJECT_AWARE_ONLY if shown(controls[name], dock)] == []
    assert shown(controls["points_per_side"], dock)
    dock.strategy.value = "object-aware"
    assert all(shown(controls[name], dock) for name in OBJECT_AWARE_ONLY)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("scope", ["plane", "stack"])
def test_settings_pass_only_what_applies(dock, strategy, scope):
    controls = controls_of(dock)
    for name in ("conf", "points_per_side", "min_area"):
        controls[name].value = controls[name].max  # changed everywhere, hidden or not
    dock.strategy.value = strategy
    dock.scope.value = scope
    settings = dock.settings()
    everything = {name: value for name, value in settings.items() if name in EVERYTHING}
    expected = {name for name, info in EVERYTHING.items() if strategy in info.spec.strategies}
    assert set(everything) == expected - ({"link_iou", "fill_gaps"} if scope == "plane" else set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a setting the strategy ignores would warn
        EverythingOptions(**everything).check_strategy()
    assert everything["min_area"] == controls["min_area"].max
    assert settings.keys() - everything.keys() == {*ImageOptions().to_dict(), *ModelOptions().to_dict()}


def test_image_and_model_controls_come_from_the_core(dock):
    for container, cls in ((dock.images, ImageOptions), (dock.model, ModelOptions)):
        for info in options_of(cls):
            assert getattr(container, info.name).tooltip == info.help_with_default(), info.name
        assert container.settings() == cls().to_dict()


def test_decode_boxes_applies_the_advanced_filters(docked, blob_pipeline, wait_done):
    viewer, dock = docked(name="cells")
    dock.show_boxes()
    wait_done(dock)
    assert dock.boxes.value.nshapes == 2
    disk_area = int((blobs() > 100).sum()) // 2
    dock.advanced.controls["min_area"].value = disk_area + 1
    dock.decode_boxes()
    wait_done(dock)
    assert dock.last_error is None, dock.last_error
    labels = viewer.layers["cells objects"]
    assert labels.data.max() == 0
    dock.output.value = labels
    dock.advanced.controls["min_area"].value = disk_area
    dock.decode_boxes()
    wait_done(dock)
    assert np.unique(labels.data).tolist() == [0, 1, 2]
