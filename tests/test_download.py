"""Downloads, hash checks and trust-on-first-use pins, against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import subprocess
import sys
import textwrap
import time
from functools import partial

import pytest

from napari_mobilesamv2.errors import IntegrityError, WeightsUnavailableError
from napari_mobilesamv2.models import download
from .conftest import register_weight_urls, serving

PAYLOAD = b"weights " * 1000


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/drive"):  # Google Drive's "download anyway" page, then the file
            if "uuid=abc" in self.path:
                self.path = "/file.bin"
                return super().do_GET()
            page = (b'<html><form id="download-form" action="http://%s/drive/confirmed" method="get">'
                    b'<input type="hidden" name="id" value="x"><input type="hidden" name="confirm" value="t">'
                    b'<input type="hidden" name="uuid" value="abc"></form></html>') % self.headers["Host"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return None
        return super().do_GET()


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.bin").write_bytes(PAYLOAD)
    with serving(partial(_Handler, directory=str(served))) as url:
        yield url


@pytest.fixture(autouse=True)
def cache(weights_cache):
    """Every test here gets an empty cache of its own."""
    return weights_cache


def test_download_with_published_hash_then_served_from_cache(server, cache, monkeypatch):
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    register_weight_urls(monkeypatch, "mobile_sam.pt", f"{server}/file.bin", sha256=sha256)
    path = download.fetch("mobile_sam.pt", progressbar=False)
    assert path == cache / "mobile_sam.pt" and path.read_bytes() == PAYLOAD
    register_weight_urls(monkeypatch, "mobile_sam.pt", "http://127.0.0.1:9/unreachable", sha256=sha256)
    assert download.fetch("mobile_sam.pt", progressbar=False) == path
    assert "ok" in download.verify("mobile_sam.pt")


def test_hash_mismatch_leaves_no_file_and_says_so(server, cache, monkeypatch):
    register_weight_urls(monkeypatch, "mobile_sam.pt", f"{server}/file.bin", sha256="0" * 64)
    with pytest.raises(WeightsUnavailableError, match="(?i)hash"):
        download.fetch("mobile_sam.pt", progressbar=False)
    assert not (cache / "mobile_sam.pt").exists()
    assert not [p for p in cache.iterdir() if "mobile_sam" in p.name]


def test_first_download_is_pinned_and_tampering_is_caught(server, cache, monkeypatch):
    register_weight_urls(monkeypatch, "ObjectAwareModel.pt", f"{server}/missing.bin", f"{server}/file.bin")
    path = download.fetch("ObjectAwareModel.pt", progressbar=False)
    pins = json.loads((cache / download.PINS_FILE).read_text())
    assert pins["ObjectAwareModel.pt"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert download.is_known_file("ObjectAwareModel.pt", path)
    path.write_bytes(PAYLOAD + b"evil")
    with pytest.raises(IntegrityError, match="was deleted"):
        download.fetch("ObjectAwareModel.pt", progressbar=False)
    assert not path.exists()


def test_user_copy_with_other_hash_is_not_known(tmp_path, server, monkeypatch):
    register_weight_urls(monkeypatch, "ObjectAwareModel.pt", f"{server}/file.bin")
    download.fetch("ObjectAwareModel.pt", progressbar=False)
    other = tmp_path / "mine.pt"
    other.write_bytes(b"something else")
    assert not download.is_known_file("ObjectAwareModel.pt", other)


def test_offline_message_names_file_url_and_destination(cache, monkeypatch):
    register_weight_urls(monkeypatch, "l2.pt", "http://127.0.0.1:9/l2.pt")
    with pytest.raises(WeightsUnavailableError) as info:
        download.fetch("l2.pt", progressbar=False)
    message = str(info.value)
    assert "l2.pt" in message and "http://127.0.0.1:9/l2.pt" in message and str(cache / "l2.pt") in message
    assert "Download errors: 127.0.0.1:9: connection refused\n" in message
    assert "HTTPConnectionPool" not in message and "Max retries" not in message


def test_missing_message_says_how_to_give_files_you_have(cache):
    message = download.missing_message(["l2.pt"])
    assert message.splitlines()[-3:] == [
        "Already have the files? Give their paths: --encoder-weights, --decoder-weights, --detector-weights",
        "(command line); encoder_weights=, decoder_weights=, detector_weights= of MobileSAMv2.from_pretrained",
        "(Python); in napari, pick them under 'model files' in the dock. Or copy them into the folder named "
        "above, or set NAPARI_MOBILESAMV2_CACHE to their folder.",
    ]


@pytest.fixture()
def silent_server():
    """A port on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture()
def full_server():
    """A port on 127.0.0.1 whose connection queue is full: connecting to it hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    waiting = []
    for _ in range(16):  # queued connections nobody accepts, until the kernel drops new ones
        client = socket.socket()
        client.settimeout(0.2)
        try:
            client.connect(address)
        except TimeoutError:
            client.close()
            break
        waiting.append(client)
    else:
        pytest.skip("the kernel kept accepting connections; cannot make connecting hang")
    yield f"http://127.0.0.1:{address[1]}"
    for client in waiting:
        client.close()
    listener.close()


def _fast_timeouts(monkeypatch, connect=0.2, read=0.3, budget=60.0):
    monkeypatch.setattr(download, "CONNECT_TIMEOUT_S", connect)
    monkeypatch.setattr(download, "READ_TIMEOUT_S", read)
    monkeypatch.setattr(download, "MIRRORS_BUDGET_S", budget)


def test_server_that_never_answers_fails_after_the_read_timeout(silent_server, cache, monkeypatch):
    _fast_timeouts(monkeypatch, read=0.3)
    register_weight_urls(monkeypatch, "l2.pt", f"{silent_server}/a", f"{silent_server}/b")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        download.fetch("l2.pt", progressbar=False)
    elapsed = time.monotonic() - start
    host = silent_server.removeprefix("http://")
    assert f"Download errors: {host}: no data for 0.3 s\n" in str(info.value)  # both mirrors, said once
    assert 0.6 <= elapsed < 3
    assert not list(cache.glob("l2.pt*"))


def test_server_that_never_accepts_fails_after_the_connect_timeout(full_server, cache, monkeypatch):
    _fast_timeouts(monkeypatch, connect=0.2)
    register_weight_urls(monkeypatch, "l2.pt", f"{full_server}/a")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"Download errors: 127.0.0.1:\d+: no connection within 0.2 s"):
        download.fetch("l2.pt", progressbar=False)
    assert time.monotonic() - start < 2


def test_mirrors_are_not_tried_once_the_budget_is_spent(silent_server, server, cache, monkeypatch):
    _fast_timeouts(monkeypatch, read=0.3, budget=0.1)
    register_weight_urls(monkeypatch, "mobile_sam.pt", f"{silent_server}/a", f"{server}/file.bin",
              sha256=hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(WeightsUnavailableError) as info:
        download.fetch("mobile_sam.pt", progressbar=False)
    host = server.removeprefix("http://")
    assert f"; {host}: not tried, 0 s already spent on this file\n" in str(info.value)
    assert not (cache / "mobile_sam.pt").exists()


OFFLINE_CLI = """
import socket, sys

def offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

socket.getaddrinfo = offline
from napari_mobilesamv2.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_command_line_without_network_says_what_to_do_in_a_few_lines(tmp_path, cache):
    image = tmp_path / "cells.png"
    image.write_bytes(b"")  # never read: the weights are loaded first
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OFFLINE_CLI), "segment-everything", str(image),
         "--labels", str(tmp_path / "labels.tif")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert err.startswith("error: Model weights are missing and could not be downloaded:\n"), err
    assert "--encoder-weights" in err and "github.com: cannot resolve the name (offline?)" in err
    for noise in ("Traceback", "HTTPSConnectionPool", "Downloading", "WARNING", "Max retries"):
        assert noise not in err, err
    assert len(err.splitlines()) == 8, err  # header, 3 files, errors, 3 lines of how to give files


def test_no_download_allowed(cache):
    with pytest.raises(WeightsUnavailableError, match="mobile_sam.pt: download https://github.com"):
        download.fetch("mobile_sam.pt", download=False)


def test_google_drive_confirmation_page(server, tmp_path):
    target = tmp_path / "out.bin"
    download.GoogleDriveDownloader(progressbar=False)(f"{server}/drive?id=x", str(target))
    assert target.read_bytes() == PAYLOAD


def test_unwritable_cache_gives_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(download.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(WeightsUnavailableError, match="cannot write to the weights cache"):
        download.fetch("mobile_sam.pt")


def test_cache_dir_follows_environment(cache):
    assert download.cache_dir() == cache
    assert download.cached_path("l2.pt") == cache / "l2.pt"
