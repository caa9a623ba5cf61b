"""Every message names the file and reaches the page as one line: uploads that are not images
(as an example, a mask, a painted layer, an image to segment), images over the page's
25-megapixel limit and decompression bombs (masks too, checked on the header before decoding),
a write that fails (a full disk) with nothing half-written left behind; names keep their
letters. The page is bounded: a session's memory is freed when it ends, and the files of
sessions idle longer than --serve_keep_hours are removed."""
import gc
import os
import resource
import signal
import struct
import time
import weakref
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from errors import UserError
from segmenter import from_checkpoint
from serve import session as handlers
from serve.app import as_message
from serve.retention import Sessions
from serve.session import Session
from tests.segmenter.test_segmenter_api import examples, run  # noqa: F401


@pytest.fixture(scope="module")
def seg(run):  # noqa: F811
    return from_checkpoint(run, steps=2)


def _png_header_only_bomb(path, width, height):
    """A 1-bit greyscale PNG of width x height, all black: a few hundred KB on disk, width x height
    bytes once decoded (what a decompression bomb is)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1,
                                                                  0, 0, 0, 0))
                + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return str(path)


def _example(tmp_path, name="photo.png", size=(40, 30)):
    images, masks = examples([size])
    Image.fromarray(images[0]).save(tmp_path / name)
    Image.fromarray(masks[0]).save(tmp_path / f"mask_{name}")
    return str(tmp_path / name), str(tmp_path / f"mask_{name}")


def test_files_that_are_not_images_are_named_wherever_they_are_uploaded(tmp_path):
    state = Session(str(tmp_path / "out"))
    image, mask = _example(tmp_path)
    (tmp_path / "notes.png").write_text("my notes, not a picture")
    notes = str(tmp_path / "notes.png")
    for args, named in [((notes, None, mask), "The example image notes.png is not an image"),
                        ((image, None, notes), "The uploaded mask notes.png is not an image"),
                        ((image, [notes]), "Painted layer 1 is not an image")]:
        with pytest.raises(UserError, match=named):
            handlers.add_example(state, *args)
    with pytest.raises(UserError, match="Not added: notes.png is not an image"):
        handlers.add_images(state, [notes])
    assert "Example 1 added" in handlers.add_example(state, image, None, mask)
    # The bytes of an editor's blob go through the same reader.
    with open(image, "rb") as f, open(mask, "rb") as g:
        assert "Example 2 added" in handlers.add_example(state, f.read(), None, g.read())


def test_the_size_limit_and_bombs_apply_to_every_upload_before_decoding(tmp_path):
    state = Session(str(tmp_path / "out"))
    image, mask = _example(tmp_path)
    bomb = _png_header_only_bomb(tmp_path / "bomb.png", 20_000, 20_000)  # 400 MP: PIL refuses
    big = _png_header_only_bomb(tmp_path / "big_mask.png", 12_000, 12_000)  # 144 MP: PIL warns
    over = _png_header_only_bomb(tmp_path / "over.png", 6_000, 5_000)  # 30 MP: only the page
    assert os.path.getsize(big) < 1_000_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path, limit in [(bomb, "is over the page's limit of 25 megapixels"),
                        (big, "is 12000x12000 pixels, over the page's limit"),
                        (over, "is 6000x5000 pixels, over the page's limit")]:
        name = os.path.basename(path)
        with pytest.raises(UserError, match=f"The uploaded mask {name} {limit}"):
            handlers.add_example(state, image, None, path)
        with pytest.raises(UserError, match=f"The example image {name} {limit}"):
            handlers.add_example(state, path, None, mask)
        with pytest.raises(UserError, match=f"Painted layer 1 {limit}"):
            handlers.add_example(state, image, [path])
        with pytest.raises(UserError, match=f"Not added: {name} {limit}"):
            handlers.add_images(state, [path])
    # Nothing was decoded: the process's peak memory did not grow by the 144 MB of one of them.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB
    assert state.examples == [] and state.queries == []


def test_names_keep_their_letters(seg, tmp_path):
    state = Session(str(tmp_path / "out"))
    image, mask = _example(tmp_path)
    handlers.add_example(state, image, None, mask)
    names = ["猫 の写真.jpg", "Ελλάδα.png", "кошка.PNG", "a/b\\c:d*.png", ". .png"]
    folder = tmp_path / "uploads"
    folder.mkdir()
    paths = []
    for k, name in enumerate(names):
        safe = name.replace("/", "_")  # a file name holds no slash; the page sees the rest
        Image.fromarray(examples([(30, 20)], seed=k)[0][0]).save(folder / safe, format="PNG")
        paths.append(str(folder / safe))
    handlers.add_images(state, paths)
    assert [n for n, _ in state.queries] == ["猫_の写真", "Ελλάδα", "кошка", "a_b_c_d", "image"]
    masks_zip, _ = handlers.segment(state, seg, steps=1, learning_rate=0.1)
    with zipfile.ZipFile(masks_zip) as archive:
        assert archive.namelist() == [f"{n}_mask.png" for n, _ in state.queries]


def test_a_failed_write_is_one_line_and_leaves_nothing_half_written(seg, tmp_path):
    state = Session(str(tmp_path / "out"))
    image, mask = _example(tmp_path)
    handlers.add_example(state, image, None, mask)
    handlers.add_images(state, [image])
    handlers.segment(state, seg, steps=1, learning_rate=0.1)
    before = {os.path.relpath(os.path.join(d, f), state.folder):
              open(os.path.join(d, f), "rb").read()
              for d, _, files in os.walk(state.folder) for f in files}
    # A disk that fills up: every write past 4 KB fails (the weights are larger).
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
        status = object()
        shown = as_message(lambda: handlers.segment(state, seg, steps=1, learning_rate=0.1),
                           status)()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    line = shown[status]
    assert list(shown) == [status] and "\n" not in line and "Traceback" not in line
    assert f"Could not write variables.npz under --serve_dir {tmp_path / 'out'}" in line
    assert state.session_id not in line
    assert "File too large" in line or "No space left" in line
    after = {os.path.relpath(os.path.join(d, f), state.folder):
             open(os.path.join(d, f), "rb").read()
             for d, _, files in os.walk(state.folder) for f in files}
    assert after == before  # no staging folder, no .zip-* file, the last results whole
    assert [e for e in os.listdir(state.folder) if e.startswith(".")] == []


def test_a_sessions_memory_is_freed_when_it_ends(tmp_path):
    sessions = Sessions(str(tmp_path / "out"), keep_hours=1)
    state = sessions.add("hash-1", Session(str(tmp_path / "out")))
    photo = np.zeros((2000, 2000, 3), np.uint8)
    state.queries.append(("big", photo))
    held = weakref.ref(state.queries[0][1])
    del photo
    assert sessions.end("hash-1") is state and sessions.get("hash-1") is None
    gc.collect()
    assert held() is None and state.ended
    with pytest.raises(UserError, match="This session has ended"):
        handlers.add_images(state, [])


def test_idle_sessions_files_are_removed_after_the_keep_time(tmp_path):
    root = tmp_path / "out"
    sessions = Sessions(str(root), keep_hours=2)
    old, fresh, kept_live = (root / name for name in ("old", "fresh", "live"))
    for folder in (old, fresh, kept_live, root / ".uploads" / "aged", root / ".tmp"):
        folder.mkdir(parents=True)
        (folder / "file.png").write_bytes(b"x")
    three_hours_ago = time.time() - 3 * 3600
    for path in (old, old / "file.png", root / ".uploads" / "aged",
                 root / ".uploads" / "aged" / "file.png", kept_live, kept_live / "file.png"):
        os.utime(path, (three_hours_ago, three_hours_ago))
    live = sessions.add("h", Session(str(root), "live"))  # pressed a button just now
    idle = sessions.add("h2", Session(str(root)))  # never wrote a file; idle for 3 h
    idle.last_used = three_hours_ago
    assert sessions.sweep() == [str(old)]
    assert sorted(os.listdir(root)) == [".tmp", ".uploads", "fresh", "live"]
    assert os.listdir(root / ".uploads") == [] and not live.ended and idle.ended
    assert sessions.sweep(now=time.time() + 3 * 3600) == [str(root / "fresh"),
                                                          str(root / "live")]
    assert live.ended
