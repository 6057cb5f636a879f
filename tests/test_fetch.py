"""Downloads of the public archives, offline: a local HTTP server serves small fixture archives."""
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import image_folder
from utils import fetch
from utils.data import download_source, find_source
from utils.sets import variant
from utils.generate import DataConfig, generate, load_images
from utils.paths import Layout


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), color, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _tar_gz(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server():
    """Serves ``files`` (path -> bytes) on localhost; ``short`` paths announce more bytes than they send."""
    files, short = {}, set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in files:
                self.send_error(404)
                return
            data = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + (1000 if self.path in short else 0)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, short
    httpd.shutdown()
    httpd.server_close()


LSUN = {f"LSUN_resize/{i}.jpg": _jpeg((40 * i, 255 - 40 * i, 90)) for i in range(5)}


def _serve_lsun(server, monkeypatch, body=None, checksum=None):
    url, files, short = server
    archive = _tar_gz(LSUN)
    files["/LSUN_resize.tar.gz"] = archive if body is None else body
    checksum = checksum or "md5:" + hashlib.md5(archive).hexdigest()
    monkeypatch.setitem(fetch.ARCHIVES, "lsun", fetch.Archive(
        f"{url}/LSUN_resize.tar.gz", "LSUN_resize.tar.gz", checksum, "LSUN_resize", "fixture"))
    return short


def test_download_fetches_checks_and_unpacks_an_archive_then_the_stage_reads_it(server, monkeypatch, tmp_path):
    _serve_lsun(server, monkeypatch)
    raw = tmp_path / "raw"
    ind = image_folder(tmp_path / "ind", classes=2, per_class=4)
    cfg = DataConfig(ind="toy", ind_path=ind, oods=["lsun"], roots=[raw], download=True, seed=0)
    assert find_source("lsun", "test", [raw])[0] is None
    written = generate(cfg, Layout(data_root=tmp_path / "gen"))
    assert set(written) == {"train", "test", "lsun"} and written["lsun"]["count"] == 5
    assert written["lsun"]["variant"] == "resize"
    images, _, _ = load_images(Layout(data_root=tmp_path / "gen"), "toy", cfg.tag, "lsun")
    assert images.shape == (5, 32, 32, 3)
    assert sorted(p.name for p in raw.iterdir()) == ["LSUN_resize", "LSUN_resize.tar.gz"]   # no partial files
    source, _ = find_source("lsun", "test", [raw])
    assert source.count == 5 and variant("lsun", source.description) == "resize"
    # A second call finds the folder and downloads nothing.
    (raw / "LSUN_resize.tar.gz").unlink()
    assert fetch.fetch_archive("lsun", raw) == raw / "LSUN_resize"


@pytest.mark.parametrize("case", ["checksum", "truncated", "missing"])
def test_a_failed_download_is_a_clear_error_and_leaves_no_file(server, monkeypatch, tmp_path, case):
    if case == "checksum":
        _serve_lsun(server, monkeypatch, checksum="md5:" + "0" * 32)
        match = "not the published"
    elif case == "truncated":
        _serve_lsun(server, monkeypatch).add("/LSUN_resize.tar.gz")
        match = "connection closed|IncompleteRead"
    else:
        _serve_lsun(server, monkeypatch)
        server[1].clear()
        match = "404"
    with pytest.raises(RuntimeError, match=match):
        fetch.fetch_archive("lsun", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_archive_is_refused_and_unpacks_nothing(server, monkeypatch, tmp_path):
    body = b"not a tar archive at all"
    _serve_lsun(server, monkeypatch, body=body, checksum="sha256:" + hashlib.sha256(body).hexdigest())
    with pytest.raises(RuntimeError, match="could not unpack"):
        fetch.fetch_archive("lsun", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["LSUN_resize.tar.gz"]     # the download, but no folder


def test_an_archive_member_outside_its_folder_is_refused(server, monkeypatch, tmp_path):
    body = _tar_gz({**LSUN, "../escape.jpg": _jpeg(0)})
    _serve_lsun(server, monkeypatch, body=body, checksum="md5:" + hashlib.md5(body).hexdigest())
    with pytest.raises(RuntimeError, match="could not unpack"):
        fetch.fetch_archive("lsun", tmp_path / "raw")
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "raw" / "LSUN_resize").exists()


def test_every_archive_has_an_address_and_a_checksum():
    for name, entry in fetch.ARCHIVES.items():
        algorithm, _, digest = entry.checksum.partition(":")
        assert entry.url.startswith("http") and len(digest) == hashlib.new(algorithm).digest_size * 2, name


def test_svhn_from_torchvision_download_or_a_local_file_is_read_with_digit_labels(tmp_path, monkeypatch):
    """SVHN's ``test_32x32.mat`` (label 10 is the digit 0), fetched by torchvision's download (faked here: it
    writes a small file of that layout) and read like one put under a --source-root by hand."""
    import torchvision.datasets as tvd
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
    digits = np.array([[10], [1], [2], [9], [10], [5]], np.uint8)

    class FakeSVHN:
        def __init__(self, root, split, download):
            assert split == "test" and download
            savemat(root / "test_32x32.mat", {"X": images, "y": digits})
    monkeypatch.setattr(tvd, "SVHN", FakeSVHN)
    source = download_source("svhn", "test", tmp_path)
    assert source.count == 6 and list(source.labels) == [0, 1, 2, 9, 0, 5]
    np.testing.assert_array_equal(source.load([3])[0], images[..., 3])
    assert find_source("svhn", "test", [tmp_path])[0].count == 6
