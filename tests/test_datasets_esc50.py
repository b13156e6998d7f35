"""Tests for the ESC-50 loader and downloader, on tiny fake copies of the dataset.

No test contacts any address but 127.0.0.1: downloads come from a local
``http.server`` in a background thread, and the offline cases use a closed or a
silent loopback port.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import GridSearchCV, PredefinedSplit, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import Bunch

from skaudio_confit.datasets import (
    ESC50_URL,
    fetch_esc50,
    get_data_home,
    load_esc50,
)

RATE = 8000
COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def _rows(n_folds=5, categories=(("dog", 0), ("rain", 10), ("airplane", 47))):
    """Metadata rows in the official format: one clip per category and fold."""
    rows = []
    for fold in range(1, n_folds + 1):
        for category, target in categories:
            src = 1000 * fold + target
            rows.append(
                {
                    "filename": f"{fold}-{src}-A-{target}.wav",
                    "fold": fold,
                    "target": target,
                    "category": category,
                    "esc10": category == "dog",
                    "src_file": src,
                    "take": "A",
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("filename", ignore_index=True)


def _clip(seed, n=400, channels=1):
    rng = np.random.default_rng(seed)
    shape = (n,) if channels == 1 else (n, channels)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def make_esc50(root, frame=None, rate=RATE, skip=(), rates=None, channels=None):
    """Write a tiny ESC-50 copy under ``root``; return its metadata frame."""
    frame = _rows() if frame is None else frame
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    frame.to_csv(root / "meta" / "esc50.csv", index=False)
    for i, name in enumerate(frame["filename"]):
        if name in skip:
            continue
        clip_rate = (rates or {}).get(name, rate)
        n_channels = (channels or {}).get(name, 1)
        sf.write(
            str(root / "audio" / name), _clip(i, channels=n_channels), clip_rate, "PCM_16"
        )
    return frame


def test_load_esc50_bunch(tmp_path):
    frame = make_esc50(tmp_path)
    bunch = load_esc50(tmp_path)

    assert isinstance(bunch, Bunch)
    assert set(bunch) == {
        "data",
        "target",
        "target_names",
        "fold",
        "sampling_rate",
        "frame",
        "filenames",
        "DESCR",
    }
    assert len(bunch.data) == 15
    for clip in bunch.data:
        assert isinstance(clip, np.ndarray) and clip.dtype == np.float32 and clip.ndim == 1
    assert bunch.sampling_rate == RATE and isinstance(bunch.sampling_rate, int)
    # Order follows the csv; targets are the category strings.
    assert bunch.target.tolist() == frame["category"].tolist()
    assert bunch.target.dtype.kind == "U"
    assert bunch.target_names.tolist() == ["airplane", "dog", "rain"]
    assert bunch.fold.dtype == np.int64
    assert bunch.fold.tolist() == frame["fold"].tolist()
    pd.testing.assert_frame_equal(bunch.frame, frame)
    assert bunch.frame["esc10"].dtype == bool
    assert bunch.filenames.tolist() == [
        str(tmp_path / "audio" / f) for f in frame["filename"]
    ]
    # The samples are the files' samples (16-bit PCM scaled to [-1, 1)).
    expected, _ = sf.read(bunch.filenames[3], dtype="float32")
    np.testing.assert_array_equal(bunch.data[3], expected)
    assert "Piczak" in bunch.DESCR and "NonCommercial" in bunch.DESCR

    X, y = load_esc50(tmp_path, return_X_y=True)
    assert len(X) == 15
    np.testing.assert_array_equal(y, bunch.target)


def test_load_esc50_mixes_stereo_and_resamples_to_most_common_rate(tmp_path):
    frame = _rows(n_folds=1)
    names = frame["filename"].tolist()
    make_esc50(
        tmp_path,
        frame,
        rate=16000,
        rates={names[0]: 8000},
        channels={names[1]: 2},
    )
    bunch = load_esc50(tmp_path)
    assert bunch.sampling_rate == 16000
    assert len(bunch.data[0]) == 800  # 400 samples at 8 kHz -> 800 at 16 kHz
    stereo, _ = sf.read(bunch.filenames[1], dtype="float32")
    np.testing.assert_allclose(bunch.data[1], stereo.mean(axis=1), atol=1e-7)
    assert all(clip.dtype == np.float32 and clip.ndim == 1 for clip in bunch.data)


def test_load_esc50_partial_copy_warns_and_loads_the_rest(tmp_path):
    frame = _rows()
    skip = set(frame["filename"].iloc[[0, 4]])
    make_esc50(tmp_path, frame, skip=skip)
    with pytest.warns(UserWarning, match=r"2 of the 15 files .* missing"):
        bunch = load_esc50(tmp_path)
    kept = frame[~frame["filename"].isin(skip)].reset_index(drop=True)
    assert len(bunch.data) == 13
    pd.testing.assert_frame_equal(bunch.frame, kept)
    assert bunch.fold.tolist() == kept["fold"].tolist()
    assert bunch.target.tolist() == kept["category"].tolist()


def test_load_esc50_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="esc50.csv"):
        load_esc50(tmp_path / "nowhere")

    make_esc50(tmp_path, skip=set(_rows()["filename"]))
    with pytest.raises(FileNotFoundError, match=r"None of the 15 files"):
        load_esc50(tmp_path)

    (tmp_path / "audio").rmdir()
    with pytest.raises(FileNotFoundError, match="audio"):
        load_esc50(tmp_path)

    (tmp_path / "audio").mkdir()
    _rows().drop(columns="category").to_csv(tmp_path / "meta" / "esc50.csv", index=False)
    with pytest.raises(ValueError, match="category"):
        load_esc50(tmp_path)

    bad = _rows()
    bad["fold"] = "first"
    bad.to_csv(tmp_path / "meta" / "esc50.csv", index=False)
    with pytest.raises(ValueError, match="fold column"):
        load_esc50(tmp_path)


def _rms(X):
    return np.array([[np.sqrt(np.mean(clip**2))] for clip in X])


def test_official_protocol_with_predefined_split(tmp_path):
    """The documented 5-fold protocol: PredefinedSplit(fold - 1) in scikit-learn CV."""
    make_esc50(tmp_path)
    esc50 = load_esc50(tmp_path)
    cv = PredefinedSplit(esc50.fold - 1)
    assert cv.get_n_splits() == 5
    for train, test in cv.split():
        assert len(np.unique(esc50.fold[test])) == 1
        assert not set(esc50.fold[train]) & set(esc50.fold[test])

    model = make_pipeline(FunctionTransformer(_rms), DummyClassifier())
    scores = cross_val_score(model, esc50.data, esc50.target, cv=cv)
    assert scores.shape == (5,)
    search = GridSearchCV(
        model, {"dummyclassifier__strategy": ["most_frequent", "uniform"]}, cv=cv
    ).fit(esc50.data, esc50.target)
    assert search.n_splits_ == 5


# --- fetch_esc50 -----------------------------------------------------------------


def _esc50_zip(frame=None, extra=()):
    """A zip archive, in memory, laid out like the official ESC-50-master.zip."""
    frame = _rows(n_folds=1) if frame is None else frame
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ESC-50-master/README.md", "fake ESC-50\n")
        zf.writestr("ESC-50-master/meta/esc50.csv", frame.to_csv(index=False))
        for i, name in enumerate(frame["filename"]):
            wav = io.BytesIO()
            sf.write(wav, _clip(i), RATE, "PCM_16", format="WAV")
            zf.writestr(f"ESC-50-master/audio/{name}", wav.getvalue())
        for name, content in extra:
            zf.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def serve():
    """Serve ``{path: bytes}`` over HTTP on 127.0.0.1; return the base URL and a hit log."""
    servers = []

    def start(files):
        hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}", hits, server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(data_home):
    return sorted(p.name for p in Path(data_home).iterdir()) if data_home.exists() else []


def test_esc50_url_is_the_official_archive():
    assert ESC50_URL == "https://github.com/karolpiczak/ESC-50/archive/master.zip"


def test_fetch_downloads_once_then_loads_from_cache(tmp_path, serve):
    frame = _rows(n_folds=1)
    base, hits, server = serve({"/master.zip": _esc50_zip(frame)})
    data_home = tmp_path / "home"
    bunch = fetch_esc50(data_home, url=f"{base}/master.zip", timeout=5)
    assert hits == ["/master.zip"]
    assert len(bunch.data) == 3
    assert bunch.target.tolist() == frame["category"].tolist()
    assert bunch.sampling_rate == RATE
    root = data_home / "ESC-50-master"
    assert (root / "meta" / "esc50.csv").is_file()
    assert (root / "README.md").is_file()
    assert _leftovers(data_home) == ["ESC-50-master"]  # no temporary files left

    server.shutdown()  # no network from here on
    server.server_close()
    again = fetch_esc50(data_home, url=f"{base}/master.zip", timeout=1)
    assert hits == ["/master.zip"]
    for a, b in zip(bunch.data, again.data, strict=True):
        np.testing.assert_array_equal(a, b)
    X, y = fetch_esc50(data_home, download_if_missing=False, return_X_y=True)
    assert len(X) == 3 and y.tolist() == frame["category"].tolist()


def test_fetch_offline_fails_fast_with_guidance(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/master.zip"
    data_home = tmp_path / "home"
    start = time.monotonic()
    with pytest.raises(ConnectionError) as excinfo:
        fetch_esc50(data_home, url=url, timeout=2)
    assert time.monotonic() - start < 2.5
    message = str(excinfo.value)
    assert url in message
    assert str(data_home / "ESC-50-master") in message
    assert "load_esc50(root)" in message
    assert isinstance(excinfo.value, OSError)
    assert _leftovers(data_home) == []


def test_fetch_times_out_on_a_silent_server(tmp_path):
    """A server that accepts connections but never answers must not hang the caller."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/master.zip"
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="timeout=0.5") as excinfo:
            fetch_esc50(tmp_path, url=url, timeout=0.5)
        assert time.monotonic() - start < 2.5
    assert url in str(excinfo.value)
    assert _leftovers(tmp_path) == []


def test_fetch_without_download_raises_file_not_found(tmp_path):
    data_home = tmp_path / "home"
    with pytest.raises(FileNotFoundError, match="download_if_missing is False") as excinfo:
        fetch_esc50(data_home, download_if_missing=False, url="http://127.0.0.1:1/x.zip")
    assert str(data_home / "ESC-50-master" / "meta" / "esc50.csv") in str(excinfo.value)
    assert "load_esc50(root)" in str(excinfo.value)
    assert not data_home.exists()


def test_fetch_http_error(tmp_path, serve):
    base, hits, _ = serve({})
    with pytest.raises(ConnectionError, match="404"):
        fetch_esc50(tmp_path, url=f"{base}/missing.zip", timeout=5)
    assert hits == ["/missing.zip"]
    assert _leftovers(tmp_path) == []


def _zip_without_esc50_folder():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("other-master/meta/esc50.csv", "filename,fold,category\n")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make_body, match",
    [
        (lambda: b"<html>not a zip</html>", "not a valid zip"),
        (_zip_without_esc50_folder, "not the ESC-50 archive"),
    ],
    ids=["not-a-zip", "wrong-layout"],
)
def test_fetch_rejects_bad_archives_and_leaves_nothing(tmp_path, serve, make_body, match):
    base, _, _ = serve({"/master.zip": make_body()})
    with pytest.raises(OSError, match=match):
        fetch_esc50(tmp_path, url=f"{base}/master.zip", timeout=5)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name", ["../evil.txt", "ESC-50-master/../../evil.txt", "/tmp/evil.txt"]
)
def test_fetch_refuses_path_traversal(tmp_path, serve, name):
    data_home = tmp_path / "a" / "home"
    body = _esc50_zip(extra=[(name, "gotcha")])
    base, _, _ = serve({"/master.zip": body})
    with pytest.raises(OSError, match="outside"):
        fetch_esc50(data_home, url=f"{base}/master.zip", timeout=5)
    assert _leftovers(data_home) == []
    assert not (tmp_path / "a" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_fetch_never_overwrites_an_incomplete_copy(tmp_path):
    (tmp_path / "ESC-50-master" / "audio").mkdir(parents=True)
    (tmp_path / "ESC-50-master" / "audio" / "mine.wav").write_bytes(b"")
    with pytest.raises(FileExistsError, match="incomplete"):
        fetch_esc50(tmp_path, url=f"http://127.0.0.1:{_closed_port()}/x.zip")
    assert (tmp_path / "ESC-50-master" / "audio" / "mine.wav").exists()


def test_data_home_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SKAUDIO_CONFIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_data_home() == tmp_path / "skaudio_confit_data"
    monkeypatch.setenv("SKAUDIO_CONFIT_DATA", str(tmp_path / "env"))
    assert get_data_home() == tmp_path / "env"
    assert get_data_home(tmp_path / "explicit") == tmp_path / "explicit"
    # fetch_esc50 uses the env var when data_home is None.
    make_esc50(tmp_path / "env" / "ESC-50-master", _rows(n_folds=1))
    assert len(fetch_esc50(download_if_missing=False).data) == 3
