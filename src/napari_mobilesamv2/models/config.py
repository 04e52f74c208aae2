"""Weights choices remembered between sessions, in a small JSON file.

The file lives in the platform's user config folder
(``platformdirs.user_config_dir("napari-mobilesamv2")``; ``$NAPARI_MOBILESAMV2_CONFIG``
names another folder) and holds:

* ``weights``: the files a user picked for each slot (``encoder`` per encoder name,
  ``decoder``, ``detector``); a missing entry means the registry file in the cache;
* ``detectors``: fine-tuned detector files trained or picked earlier, newest first;
* ``encoder`` and ``device``: the last ones used.

The file is written atomically; a missing or unreadable file means "nothing remembered".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .registry import DECODER_FILE, DETECTOR_FILE, ENCODER_FILES

log = logging.getLogger(__name__)

CONFIG_ENV = "NAPARI_MOBILESAMV2_CONFIG"
CONFIG_FILE = "settings.json"
#: fine-tuned detector files remembered at most
MAX_DETECTORS = 20
SLOTS = ("encoder", "decoder", "detector")

#: help text of each slot's file, for tooltips and the docs
SLOT_HELP = {
    "encoder": "image encoder weights file you already have, for the chosen encoder (empty: the published file "
               "in the weights cache, e.g. " + ", ".join(f"{f} for {e}" for e, f in ENCODER_FILES.items()) + ")",
    "decoder": f"prompt encoder + mask decoder file you already have (empty: the published {DECODER_FILE} "
               "in the weights cache)",
    "detector": f"object-aware detector file: the published {DETECTOR_FILE} or one you fine-tuned (empty: the "
                "published file in the weights cache)",
}


def config_dir() -> Path:
    """Folder of the settings file (``$NAPARI_MOBILESAMV2_CONFIG`` overrides the platform's)."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-mobilesamv2"))


def config_path() -> Path:
    """The settings file."""
    return config_dir() / CONFIG_FILE


def load_config() -> dict[str, Any]:
    """The remembered settings; ``{}`` when there are none or the file cannot be read."""
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(config: dict[str, Any]) -> None:
    """Write the settings file atomically; a failure is logged, not raised (nothing depends on it)."""
    from ..errors import OutputError
    from ..io import atomic_write

    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
    except (OSError, OutputError) as error:
        log.warning("could not remember the weights choice in %s: %s", path, error)


def update_config(**changes: Any) -> dict[str, Any]:
    """Read the settings, change some top-level entries, write them back; returns the new settings."""
    config = load_config()
    config.update(changes)
    save_config(config)
    return config


def weights_files(encoder: str, config: dict[str, Any] | None = None) -> dict[str, Path | None]:
    """The file picked for each slot with `encoder` (``None``: the registry file in the cache).

    Files that no longer exist are left out (``None``).
    """
    config = load_config() if config is None else config
    chosen = config.get("weights", {})
    paths = {
        "encoder": chosen.get("encoder", {}).get(encoder),
        "decoder": chosen.get("decoder"),
        "detector": chosen.get("detector"),
    }
    return {slot: Path(p) if p and Path(p).is_file() else None for slot, p in paths.items()}


def remember_weights(encoder: str, files: dict[str, str | os.PathLike | None]) -> None:
    """Remember the files picked for the slots (``None`` or ``""``: the registry file) with `encoder`."""
    config = load_config()
    chosen = dict(config.get("weights", {}))
    per_encoder = dict(chosen.get("encoder", {}))
    for slot, path in files.items():
        value = str(Path(path).expanduser().resolve()) if path else None
        if slot == "encoder":
            per_encoder[encoder] = value
        elif slot in SLOTS:
            chosen[slot] = value
        else:
            raise KeyError(f"unknown weights slot {slot!r}; slots: {', '.join(SLOTS)}")
    chosen["encoder"] = {k: v for k, v in per_encoder.items() if v}
    config["weights"] = {k: v for k, v in chosen.items() if v}
    save_config(config)


def remember_detector(path: str | os.PathLike) -> None:
    """Remember a fine-tuned detector file so the napari model section lists it (newest first).

    Parameters
    ----------
    path : path-like
        The detector file (e.g. the one a training run wrote).
    """
    resolved = str(Path(path).expanduser().resolve())
    config = load_config()
    known = [p for p in config.get("detectors", []) if p != resolved]
    config["detectors"] = [resolved, *known][:MAX_DETECTORS]
    save_config(config)


def remembered_detectors(config: dict[str, Any] | None = None) -> list[Path]:
    """Fine-tuned detector files remembered earlier that still exist, newest first."""
    config = load_config() if config is None else config
    return [Path(p) for p in config.get("detectors", []) if Path(p).is_file()]
