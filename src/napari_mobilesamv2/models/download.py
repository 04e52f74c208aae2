"""Find, download and verify weights files.

Files live in one cache directory: the platform cache dir (``pooch.os_cache``) or
``$NAPARI_MOBILESAMV2_CACHE``. A user may also put a file there by hand or pass
the path of a copy they already have. Downloads go through pooch (atomic: a failed
download leaves no partial file). Files without a published sha256 are pinned at
their first download in ``pins.json`` and checked against that pin afterwards.

Offline or on a bad network a download fails fast: a server must accept the
connection within ``CONNECT_TIMEOUT_S`` and never stay silent longer than
``READ_TIMEOUT_S``, and no further mirror of a file is tried once
``MIRRORS_BUDGET_S`` were spent on it. Each failure is summarised in one short
reason, which the "weights are missing" message lists.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pooch

from ..errors import IntegrityError, OutputError, WeightsUnavailableError
from .registry import WeightFile, human_url, weight_file

log = logging.getLogger(__name__)

CACHE_ENV = "NAPARI_MOBILESAMV2_CACHE"
PINS_FILE = "pins.json"
_HASH_CACHE_FILE = "hash-cache.json"

#: seconds a server may take to accept the connection
CONNECT_TIMEOUT_S = 5.0
#: seconds a server may stay silent before or during a download
READ_TIMEOUT_S = 60.0
#: once this many seconds were spent on a file, its remaining mirrors are not tried
MIRRORS_BUDGET_S = 90.0

# file name -> reasons its last download attempt failed (one per mirror), for missing_message
_failures: dict[str, list[str]] = {}


def cache_dir() -> Path:
    """Directory that holds downloaded weights (``$NAPARI_MOBILESAMV2_CACHE`` overrides)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(pooch.os_cache("napari-mobilesamv2"))


def cached_path(name: str) -> Path:
    """Where the registry file `name` is (or would be) in the cache."""
    return cache_dir() / weight_file(name).name


def sha256_of(path: str | os.PathLike, *, remembered: bool = True) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so big files hash once.

    With ``remembered=False`` the file is always read and hashed (used for pickles,
    whose hash decides whether they may be unpickled).
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    memo = _read_json(cache_dir() / _HASH_CACHE_FILE)
    hit = memo.get(key)
    if remembered and hit and hit["size"] == stat.st_size and hit["mtime_ns"] == stat.st_mtime_ns:
        return hit["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    _write_json(cache_dir() / _HASH_CACHE_FILE, memo, required=False)
    return digest.hexdigest()


def pinned_sha256(name: str) -> str | None:
    """The sha256 recorded at the first download of a file with no published hash."""
    entry = _read_json(cache_dir() / PINS_FILE).get(name)
    return entry["sha256"] if entry else None


def expected_sha256(name: str) -> str | None:
    """Published sha256 of `name`, else its trust-on-first-use pin, else None."""
    return weight_file(name).sha256 or pinned_sha256(name)


def is_known_file(name: str, path: str | os.PathLike) -> bool:
    """True if `path` has the published or pinned sha256 of registry file `name`."""
    return is_known_sha256(name, sha256_of(path, remembered=not weight_file(name).pickled))


def is_known_sha256(name: str, actual: str) -> bool:
    """True if `actual` is the published or pinned sha256 of registry file `name`."""
    expected = expected_sha256(name)
    return expected is not None and actual == expected


def verify(name: str, path: str | os.PathLike | None = None) -> str:
    """Check a file against its published or pinned sha256.

    Returns a one-line status. Raises :class:`IntegrityError` on a mismatch; a
    mismatching file inside the cache is deleted (it would be re-downloaded).
    """
    path = Path(path) if path is not None else cached_path(name)
    if not path.is_file():
        raise WeightsUnavailableError(missing_message([name]))
    return check_sha256(name, path, sha256_of(path, remembered=not weight_file(name).pickled))


def check_sha256(name: str, path: str | os.PathLike, actual: str) -> str:
    """Compare `actual`, the sha256 of the bytes read from `path`, with `name`'s published or pinned one.

    Returns and raises like :func:`verify` (a mismatching file in the cache is deleted);
    callers that read a file once hash those bytes and check the digest here.
    """
    path = Path(path)
    expected = expected_sha256(name)
    if expected is None:
        return f"{name}: no published hash and not pinned yet (sha256 {actual})"
    if actual != expected:
        in_cache = path.resolve().parent == cache_dir().resolve()
        if in_cache:
            path.unlink()
        raise IntegrityError(
            f"{path} has sha256 {actual} but {name} should have {expected}"
            + ("; the corrupt file was deleted, download it again" if in_cache else "")
        )
    return f"{name}: ok (sha256 {actual})"


def fetch(name: str, *, download: bool = True, progressbar=True, check: bool = True) -> Path:
    """Return the verified cached copy of registry file `name`, downloading it if needed.

    `progressbar`: show a text progress bar, or an object with ``total``, ``update(n)``,
    ``reset()`` and ``close()`` (and used as a context manager) that receives the progress.

    With ``check=False`` a file already in the cache is returned without hashing it: for a
    caller that reads the file once, then hashes and checks those bytes (:func:`check_sha256`).

    Raises
    ------
    WeightsUnavailableError
        The file is not cached and cannot be downloaded; the message names its
        URL(s) and the path where a copy can be put.
    IntegrityError
        The downloaded or cached file does not match its sha256.
    """
    entry = weight_file(name)
    target = cached_path(name)
    if target.is_file():
        if check:
            verify(name, target)
        return target
    if not download:
        raise WeightsUnavailableError(missing_message([name]))
    _ensure_writable(target.parent)
    errors = []
    started = time.monotonic()
    for url in entry.urls:
        spent = time.monotonic() - started
        if spent > MIRRORS_BUDGET_S:
            errors.append(f"{_host(url)}: not tried, {spent:.0f} s already spent on this file")
            continue
        try:
            _download(entry, url, target, progressbar)
            break
        except Exception as exc:  # network, HTTP or hash errors: try the next mirror
            errors.append(download_error_reason(exc, url))
            log.debug("download of %s from %s failed", name, human_url(url), exc_info=exc)
    else:
        _failures[name] = errors
        raise WeightsUnavailableError(missing_message([name]))
    _failures.pop(name, None)
    if entry.sha256 is None and pinned_sha256(name) is None:
        try:
            _pin(entry, target)
        except WeightsUnavailableError:
            target.unlink(missing_ok=True)  # an unpinned download could never be checked again
            raise
    return target


def missing_message(names: list[str], errors: list[str] | None = None) -> str:
    """Message naming each missing file, where to get it and how to give a copy you have.

    `errors` defaults to the reasons the last download attempts of these files failed.
    """
    lines = ["Model weights are missing and could not be downloaded:"]
    for name in names:
        entry = weight_file(name)
        urls = " or ".join(human_url(u) for u in entry.urls)
        lines.append(f"  {name}: download {urls} and save it as {cached_path(name)}")
    if errors is None:
        errors = [reason for name in names for reason in _failures.get(name, [])]
    if errors:
        lines.append("Download errors: " + "; ".join(dict.fromkeys(errors)))
    lines += [
        "Already have the files? Give their paths: --encoder-weights, --decoder-weights, --detector-weights",
        "(command line); encoder_weights=, decoder_weights=, detector_weights= of MobileSAMv2.from_pretrained",
        f"(Python); in napari, pick them under 'model files' in the dock. Or copy them into the folder named "
        f"above, or set {CACHE_ENV} to their folder.",
    ]
    return "\n".join(lines)


def download_error_reason(exc: BaseException, url: str) -> str:
    """One short line saying why downloading `url` failed (no library internals).

    Examples: ``github.com: cannot resolve the name (offline?)``,
    ``example.org: HTTP 404 Not Found``.
    """
    import requests
    import urllib3

    host = _host(url)
    chain = list(_causes(exc))

    def has(*types: type) -> bool:
        return any(isinstance(e, types) for e in chain)

    if has(getattr(urllib3.exceptions, "NameResolutionError", socket.gaierror), socket.gaierror):  # urllib3 < 2
        return f"{host}: cannot resolve the name (offline?)"
    if has(ConnectionRefusedError):
        return f"{host}: connection refused"
    if has(requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        return f"{host}: no data for {READ_TIMEOUT_S:g} s"
    if has(requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return f"{host}: no connection within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return f"{host}: HTTP {exc.response.status_code} {exc.response.reason}"
    if has(requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError):
        return f"{host}: the connection broke off during the download"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"{host}: cannot connect"
    return f"{host}: {exc}"


def _causes(exc: BaseException | None):
    """`exc` and the exceptions it wraps (causes, contexts, urllib3 reasons, exception args)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in e.args if isinstance(a, BaseException)]


def _host(url: str) -> str:
    """Host (and port) that a registry URL is downloaded from."""
    return urlsplit(_gdrive_url(url) if url.startswith("gdrive:") else url).netloc


def _download(entry: WeightFile, url: str, target: Path, progressbar: bool) -> None:
    known_hash = f"sha256:{entry.sha256}" if entry.sha256 else None
    if url.startswith("gdrive:"):
        url, downloader = _gdrive_url(url), GoogleDriveDownloader(progressbar=progressbar)
    else:
        downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    pooch.retrieve(
        url, known_hash=known_hash, fname=target.name, path=target.parent,
        downloader=downloader,
    )


def _gdrive_url(url: str) -> str:
    file_id = url.removeprefix("gdrive:")
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


class _FormParser(html.parser.HTMLParser):
    """Collects the action and hidden inputs of Google Drive's 'download anyway' form."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden" and "name" in attrs:
            self.fields[attrs["name"]] = attrs.get("value", "")


class GoogleDriveDownloader:
    """pooch downloader for Google Drive files, answering the large-file confirm page."""

    def __init__(self, progressbar: bool = True):
        self.progressbar = progressbar

    def __call__(self, url, output_file, pooch_obj=None, check_only=False):
        import requests

        with requests.Session() as session:
            timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            response = session.get(url, stream=True, timeout=timeout)
            response.raise_for_status()
            if response.headers.get("Content-Type", "").startswith("text/html"):
                form = _FormParser()
                form.feed(response.text)
                if not form.action:
                    raise OSError("Google Drive answered with a page instead of the file")
                response = session.get(form.action, params=form.fields, stream=True, timeout=timeout)
                response.raise_for_status()
                if response.headers.get("Content-Type", "").startswith("text/html"):
                    raise OSError("Google Drive refused the download (quota or permissions)")
            if check_only:
                return True
            _stream(response, output_file, self.progressbar)
        return None


def _stream(response, output_file, progressbar: bool) -> None:
    from tqdm.auto import tqdm

    total = int(response.headers.get("Content-Length", 0)) or None
    close = isinstance(output_file, (str, os.PathLike))
    out = open(output_file, "w+b") if close else output_file
    if not isinstance(progressbar, bool):  # a progress object of the caller's (as pooch accepts)
        progressbar.total = total
        bar = progressbar
    else:
        bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progressbar)
    try:
        with bar:
            for chunk in response.iter_content(chunk_size=1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    finally:
        if close:
            out.close()


def _pin(entry: WeightFile, path: Path) -> None:
    pins = _read_json(cache_dir() / PINS_FILE)
    digest = sha256_of(path)
    pins[entry.name] = {"sha256": digest, "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(cache_dir() / PINS_FILE, pins, required=True)
    log.warning("%s has no published sha256; pinned its first download: %s", entry.name, digest)


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise WeightsUnavailableError(
            f"cannot write to the weights cache {folder} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable folder"
        ) from exc


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict, *, required: bool) -> None:
    from ..io import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    except (OSError, OutputError) as exc:
        if required:
            raise WeightsUnavailableError(f"cannot write {path}: {exc}") from exc
        log.debug("could not update %s: %s", path, exc)
