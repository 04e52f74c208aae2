"""Small Qt adjustments that keep the docks narrow whatever text they show."""

from __future__ import annotations

import re

from magicgui.widgets import ComboBox, Label
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QComboBox, QSizePolicy

#: a combo box is at least this many characters wide and never widens for a long layer name
COMBO_CHARS = 12
#: unbroken runs of text (paths, URLs) longer than this get break opportunities
LONG_WORD = 28
ZERO_WIDTH_SPACE = "\u200b"


def wrapping_label(value: str = "", **kwargs) -> Label:
    """A label that wraps its text to the dock's width instead of widening the dock."""
    label = Label(value=value, **kwargs)
    native = label.native
    native.setWordWrap(True)
    native.setMinimumWidth(0)
    policy = native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Ignored)
    policy.setHeightForWidth(True)
    native.setSizePolicy(policy)
    native._fits_height = _FitHeight(native)  # kept with the label
    return label


class _FitHeight(QObject):
    """Keeps a wrapping label at least as tall as its text needs at its current width.

    Form layouts ask a label for its height before they settle its width, so the last
    wrapped line could be cut off; the height is set again when the label is resized or
    repainted (a new text repaints it).
    """

    def __init__(self, label):
        super().__init__(label)
        self._label = label
        label.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() in (QEvent.Resize, QEvent.FontChange, QEvent.Show, QEvent.Paint):
            self.fit()
        return False

    def fit(self) -> None:
        label = self._label
        needed = label.heightForWidth(label.width()) if label.width() > 0 else -1
        if needed > 0 and needed != label.minimumHeight():
            label.setMinimumHeight(needed)


def breakable(text: str) -> str:
    """`text` with invisible break opportunities inside long paths and URLs, so it can wrap."""

    def split(match: re.Match) -> str:
        word = re.sub(r"([/\\_.,:;=&?-])", r"\1" + ZERO_WIDTH_SPACE, match.group(0))
        return word

    return re.sub(r"\S{%d,}" % LONG_WORD, split, text)


def narrow_combo(combo: ComboBox) -> ComboBox:
    """A combo box whose width does not follow its longest choice (a long layer name)."""
    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(COMBO_CHARS)
    return combo
