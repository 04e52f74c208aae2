"""The model section of the dock: encoder, device, trust, and the weights files.

It shows which registry files are in the cache, downloads the missing ones (with a
progress bar, as a job of the dock) and lets a user pick files they already have
for each slot (encoder, decoder, detector; fine-tuned detectors are listed). The
choice is remembered between sessions (:mod:`napari_mobilesamv2.models.config`) and
given to the pipelines (:func:`._models.set_weights_files`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from ..models import config, download
from ..models.registry import default_weight_set
from ..options import DEVICES, EMBEDDINGS_FOLDER_HELP, ModelOptions, options_of
from ..steps import Progress
from . import api
from ._models import set_weights_files
from ._options_form import option_widget
from ._qt_helpers import breakable, narrow_combo, wrapping_label

WEIGHT_FILTER = "weights (*.pt *.pth *.safetensors);;all files (*)"
PUBLISHED = "published file (cache)"
TIPS = {
    "show_files": "show which weights files are present, download the missing ones or pick files you already have",
    "download": "download the missing published weights files into the weights cache (needs internet)",
    "fine_tuned": "detector files you fine-tuned (remembered between sessions); the published one by default",
}


def latest_trained_detector() -> Path | None:
    """The detector trained in this session by the fine-tuning dock, if that dock exists."""
    try:
        from ._evaluate_widgets import latest_detector
    except ImportError:
        return None
    try:
        return latest_detector()
    except Exception:  # noqa: BLE001 - another dock's helper; a failure only hides one choice
        return None


class ByteCounter:
    """A progress object for downloads (the protocol pooch and tqdm use), read from another thread."""

    def __init__(self):
        self.total: int | None = None
        self.n = 0

    def update(self, count: int) -> None:
        self.n += int(count)

    def reset(self) -> None:
        self.n = 0

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def download_steps(names: list[str], fetch: Callable | None = None, poll_s: float = 0.2):
    """Download registry files one after the other; yields byte progress every `poll_s` seconds.

    Each download runs in a thread of its own so that the progress keeps coming while it
    runs; a cancelled job stops after the file being downloaded. `fetch` defaults to
    :func:`napari_mobilesamv2.models.download.fetch`.
    """
    fetch = download.fetch if fetch is None else fetch
    for i, name in enumerate(names):
        counter, outcome = ByteCounter(), {}

        def get(name=name, counter=counter, outcome=outcome):
            try:
                outcome["path"] = fetch(name, progressbar=counter)
            except Exception as error:  # noqa: BLE001 - re-raised in the job below
                outcome["error"] = error

        thread = threading.Thread(target=get, daemon=True, name=f"download {name}")
        thread.start()
        while thread.is_alive():
            thread.join(poll_s)
            total = counter.total or 0
            got = f"{counter.n / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{counter.n / 1e6:.1f} MB"
            yield Progress("downloading", min(counter.n, total) if total else 0, total or 1,
                           f"{name} ({i + 1} of {len(names)}): {got}")
        if "error" in outcome:
            raise outcome["error"]
        yield Progress("downloading", 1, 1, f"{name} ({i + 1} of {len(names)}) downloaded")
    return names


class ModelControls(Container):
    """Encoder, device, trust, and the weights files of the three slots (from :class:`ModelOptions`).

    Parameters
    ----------
    launch : callable, optional
        ``launch(make_job, then)`` runs a job in a dock (used for downloads).
    """

    def __init__(self, launch: Callable | None = None):
        super().__init__(labels=True)
        self.launch = launch
        infos = {info.name: info for info in options_of(ModelOptions)}
        remembered = config.load_config()
        self.encoder = option_widget(infos["encoder"])
        if remembered.get("encoder") in self.encoder.choices:
            self.encoder.value = remembered["encoder"]
        device = infos["device"]
        self.device = ComboBox(label="device", choices=DEVICES, tooltip=device.help_with_default(),
                               value=remembered.get("device") if remembered.get("device") in DEVICES else device.default)
        self.trust_weights = option_widget(infos["trust_weights"])
        self.files_status = wrapping_label(tooltip="the weights files the chosen encoder needs, and where they are")
        self.show_files = CheckBox(text="model files", value=False, tooltip=TIPS["show_files"])
        self.encoder_file = self._file_edit("encoder file", config.SLOT_HELP["encoder"])
        self.decoder_file = self._file_edit("decoder file", config.SLOT_HELP["decoder"])
        self.fine_tuned = narrow_combo(ComboBox(label="detector", choices=self._detector_choices,
                                                tooltip=TIPS["fine_tuned"]))
        self.detector_file = self._file_edit("detector file", config.SLOT_HELP["detector"])
        self.download_button = PushButton(text="Download missing files", tooltip=TIPS["download"])
        self.embeddings_folder = FileEdit(label="embeddings folder", mode="d", tooltip=EMBEDDINGS_FOLDER_HELP)
        self.embeddings_folder.line_edit.value = ""  # empty: embeddings are kept in memory only
        self.embeddings_folder.line_edit.native.setPlaceholderText("none (memory only)")
        self.embeddings_folder.line_edit.native.setMinimumWidth(0)
        self.files = Container(widgets=[
            self.encoder_file, self.decoder_file, self.fine_tuned, self.detector_file, self.download_button,
            self.embeddings_folder,
        ])
        self.extend([self.encoder, self.device, self.trust_weights, self.show_files, self.files_status, self.files])
        self._load_files(remembered)
        self.encoder.changed.connect(self._encoder_changed)
        self.device.changed.connect(lambda value: config.update_config(device=value))
        for edit in (self.encoder_file, self.decoder_file, self.detector_file):
            edit.changed.connect(self._files_changed)
        self.fine_tuned.changed.connect(self._pick_fine_tuned)
        self.show_files.changed.connect(self._show_applicable)
        self.download_button.changed.connect(self.download_missing)
        self._loading = True
        self._files_changed()  # gives the remembered files to the pipelines
        self._loading = False
        self._show_applicable()

    @staticmethod
    def _file_edit(label: str, tooltip: str) -> FileEdit:
        edit = FileEdit(label=label, mode="r", filter=WEIGHT_FILTER, tooltip=tooltip)
        edit.line_edit.value = ""  # empty: the published file (FileEdit would show the current folder)
        edit.line_edit.tooltip = tooltip
        edit.choose_btn.tooltip = f"choose the {label}"
        edit.line_edit.native.setPlaceholderText(PUBLISHED)
        edit.line_edit.native.setMinimumWidth(0)
        return edit

    def settings(self) -> dict:
        return {"encoder": self.encoder.value, "device": self.device.value, "trust_weights": self.trust_weights.value}

    def chosen_files(self) -> dict[str, Path | None]:
        """The file picked for each slot; ``None``: the published file in the cache."""
        edits = {"encoder": self.encoder_file, "decoder": self.decoder_file, "detector": self.detector_file}
        return {slot: _path(edit) for slot, edit in edits.items()}

    def missing_files(self) -> list[str]:
        """Registry files the chosen encoder needs, not picked by hand and not in the cache."""
        chosen = self.chosen_files()
        slots = ("encoder", "decoder", "detector")
        return [name for slot, name in zip(slots, default_weight_set(self.encoder.value))
                if chosen[slot] is None and not download.cached_path(name).is_file()]

    def _detector_choices(self, _widget=None):
        found = [*config.remembered_detectors()]
        latest = latest_trained_detector()
        if latest is not None and Path(latest).is_file() and Path(latest).resolve() not in found:
            found.insert(0, Path(latest).resolve())
        return [(PUBLISHED, None), *((f"{p.parent.name}/{p.name}", p) for p in found)]

    def _load_files(self, remembered: dict) -> None:
        files = config.weights_files(self.encoder.value, remembered)
        for slot, edit in (("encoder", self.encoder_file), ("decoder", self.decoder_file),
                           ("detector", self.detector_file)):
            edit.line_edit.value = "" if files[slot] is None else str(files[slot])

    def _encoder_changed(self, value: str) -> None:
        config.update_config(encoder=value)
        self._loading = True
        self._load_files(config.load_config())
        self._loading = False
        self._files_changed()

    def _pick_fine_tuned(self, path) -> None:
        self.detector_file.line_edit.value = "" if path is None else str(path)

    def _files_changed(self, _value=None) -> None:
        chosen = self.chosen_files()
        bad = [f"{slot} file {path} does not exist" for slot, path in chosen.items()
               if path is not None and not path.is_file()]
        usable = {slot: (path if path is not None and path.is_file() else None) for slot, path in chosen.items()}
        set_weights_files(self.encoder.value, (usable["encoder"], usable["decoder"], usable["detector"]))
        if not self._loading and not bad:
            config.remember_weights(self.encoder.value, usable)
            if usable["detector"] is not None:
                config.remember_detector(usable["detector"])
                self.fine_tuned.reset_choices()
        self.refresh_status(bad)

    def refresh_status(self, problems: list[str] | None = None) -> None:
        """Say which files are used and which are missing."""
        chosen = self.chosen_files()
        slots = ("encoder", "decoder", "detector")
        parts = []
        for slot, name in zip(slots, default_weight_set(self.encoder.value)):
            if chosen[slot] is not None:
                parts.append(f"{slot}: {chosen[slot].name} (yours)")
            elif download.cached_path(name).is_file():
                parts.append(f"{slot}: {name} ✓")
            else:
                parts.append(f"{slot}: {name} missing")
        missing = self.missing_files()
        text = "; ".join(parts)
        if missing:
            text += ". They download on the first run; 'model files' to download now or pick your own."
        self.files_text = "; ".join([text, *(problems or [])])
        self.files_status.value = breakable(self.files_text)
        self.download_button.enabled = bool(missing)

    def _show_applicable(self, _value=None) -> None:
        self.files.visible = self.show_files.value

    def download_missing(self) -> None:
        """Download the missing registry files in the dock's worker (progress bar, Cancel)."""
        names = self.missing_files()
        if not names or self.launch is None:
            self.refresh_status()
            return

        def make_job():
            return api.Job(lambda: download_steps(names), 1, lambda _: self.refresh_status(),
                           f"download {', '.join(names)}")

        self.launch(make_job)


def _path(edit: FileEdit) -> Path | None:
    text = str(edit.line_edit.value).strip()
    return Path(text).expanduser() if text else None
