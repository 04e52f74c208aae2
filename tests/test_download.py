"""Downloads, hash checks and trust-on-first-use pins, against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from dataclasses import replace
from functools import partial

import pytest

from napari_mobilesamv2.errors import IntegrityError, WeightsUnavailableError
from napari_mobilesamv2.models import download
from napari_mobilesamv2.models.registry import WEIGHT_FILES

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
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(download.CACHE_ENV, str(folder))
    return folder


def _register(monkeypatch, name, *urls, sha256=None):
    monkeypatch.setitem(WEIGHT_FILES, name, replace(WEIGHT_FILES[name], urls=urls, sha256=sha256))


def test_download_with_published_hash_then_served_from_cache(server, cache, monkeypatch):
    _register(monkeypatch, "mobile_sam.pt", f"{server}/file.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    path = download.fetch("mobile_sam.pt", progressbar=False)
    assert path == cache / "mobile_sam.pt" and path.read_bytes() == PAYLOAD
    _register(monkeypatch, "mobile_sam.pt", "http://127.0.0.1:9/unreachable", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert download.fetch("mobile_sam.pt", progressbar=False) == path
    assert "ok" in download.verify("mobile_sam.pt")


def test_hash_mismatch_leaves_no_file_and_says_so(server, cache, monkeypatch):
    _register(monkeypatch, "mobile_sam.pt", f"{server}/file.bin", sha256="0" * 64)
    with pytest.raises(WeightsUnavailableError, match="(?i)hash"):
        download.fetch("mobile_sam.pt", progressbar=False)
    assert not (cache / "mobile_sam.pt").exists()
    assert not [p for p in cache.iterdir() if "mobile_sam" in p.name]


def test_first_download_is_pinned_and_tampering_is_caught(server, cache, monkeypatch):
    _register(monkeypatch, "ObjectAwareModel.pt", f"{server}/missing.bin", f"{server}/file.bin")
    path = download.fetch("ObjectAwareModel.pt", progressbar=False)
    pins = json.loads((cache / download.PINS_FILE).read_text())
    assert pins["ObjectAwareModel.pt"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert download.is_known_file("ObjectAwareModel.pt", path)
    path.write_bytes(PAYLOAD + b"evil")
    with pytest.raises(IntegrityError, match="was deleted"):
        download.fetch("ObjectAwareModel.pt", progressbar=False)
    assert not path.exists()


def test_user_copy_with_other_hash_is_not_known(tmp_path, server, monkeypatch):
    _register(monkeypatch, "ObjectAwareModel.pt", f"{server}/file.bin")
    download.fetch("ObjectAwareModel.pt", progressbar=False)
    other = tmp_path / "mine.pt"
    other.write_bytes(b"something else")
    assert not download.is_known_file("ObjectAwareModel.pt", other)


def test_offline_message_names_file_url_and_destination(cache, monkeypatch):
    _register(monkeypatch, "l2.pt", "http://127.0.0.1:9/l2.pt")
    with pytest.raises(WeightsUnavailableError) as info:
        download.fetch("l2.pt", progressbar=False)
    message = str(info.value)
    assert "l2.pt" in message and "http://127.0.0.1:9/l2.pt" in message and str(cache / "l2.pt") in message


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
