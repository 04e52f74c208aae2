"""Small Qt adjustments that keep the docks narrow whatever text they show."""

from __future__ import annotations

import re

from magicgui.widgets import ComboBox, Label
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
    return label


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
