"""magicgui controls made from the core options: same defaults, ranges, choices and help."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox, Widget

from ..options import OptionInfo

QT_INT_MAX = 2**31 - 1  # Qt spin boxes hold 32-bit integers
FLOAT_STEP = 0.05
FLOAT_RESOLUTION = 0.01  # Qt's float spin boxes show two decimals: the least value above an excluded minimum


def option_widget(info: OptionInfo) -> Widget:
    """A control for one option; an optional one shows its ``unset`` text at the bottom of its range."""
    label = info.name.replace("_", " ")
    tooltip = info.help_with_default()
    spec = info.spec
    if spec.choices is not None:
        return ComboBox(name=info.name, label=label, choices=spec.choices, value=info.default, tooltip=tooltip)
    if info.type is bool:
        return CheckBox(name=info.name, text=label, value=info.default, tooltip=tooltip)
    if info.type is int:
        low, high = int(spec.minimum), min(int(spec.maximum or QT_INT_MAX), QT_INT_MAX)
        widget = SpinBox(name=info.name, label=label, min=low - info.optional, max=high, step=spec.multiple_of or 1,
                         tooltip=tooltip, value=low - 1 if info.default is None else info.default)
    else:
        low, high = float(spec.minimum), float(spec.maximum)
        if spec.minimum_exclusive:
            low += FLOAT_RESOLUTION
        step = FLOAT_STEP if high - low <= 4 else 1.0
        bottom = low - step if info.optional else low
        widget = FloatSpinBox(name=info.name, label=label, min=bottom, max=high, step=step, tooltip=tooltip,
                              value=bottom if info.default is None else info.default)
    if info.optional:
        widget.native.setSpecialValueText(spec.unset.split(";")[0] if spec.unset else "off")
    return widget


def option_value(info: OptionInfo, widget: Widget) -> Any:
    """The option value a control holds (``None`` for an optional one at its 'unset' position)."""
    if info.optional and widget.value < info.spec.minimum:
        return None
    return widget.value


class OptionsForm(Container):
    """Controls for some options of one options class, with values as keywords.

    Parameters
    ----------
    infos : iterable of OptionInfo
        The options shown, in order.
    """

    def __init__(self, infos: Iterable[OptionInfo], **kwargs):
        super().__init__(labels=True, **kwargs)
        self.infos = {info.name: info for info in infos}
        self.controls = {name: option_widget(info) for name, info in self.infos.items()}
        self.extend(list(self.controls.values()))

    def values(self) -> dict[str, Any]:
        """Every shown option's value, by name."""
        return {name: option_value(self.infos[name], widget) for name, widget in self.controls.items()}

    def show_for(self, strategy: str) -> None:
        """Show only the options that apply to `strategy`."""
        for name, widget in self.controls.items():
            widget.visible = strategy in self.infos[name].spec.strategies
