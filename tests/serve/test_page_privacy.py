"""A session is private, checked with two browsers (two Playwright contexts: two cookie jars)
and raw HTTP on a real `run_metasegnet.py --serve`:

* browser A segments; browser B, and a client without cookies, get nothing of it: not A's
  files (Gradio's file route answers 403 for every file A was sent), not A's events (joining,
  reading or beating A's session hash: 403), and B's own session is empty;
* no file under --serve_dir is served by its path, not even to A;
* the session's folder name is random and neither it nor A's session hash is written into any
  download;
* a file that is not an image, uploaded as A's mask, is one line on A's page;
* when A leaves, its session's memory is freed (the server says so).
Skips, saying why, only where no browser can be had."""
import io
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile

from PIL import Image

from tests.fixtures.page_driver import open_page, page_process, put_in_editor, add_example
from tests.segmenter.test_segmenter_api import FIXTURE_RUN, examples
from tests.serve.test_page_browser import _playwright


def _raw(url, data=None):
    """Status of a request with no cookie at all."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}
                                     if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def _join(session_hash):
    return json.dumps({"data": [None, 3, 0.1], "event_data": None, "fn_index": 0,
                       "trigger_id": 1, "session_hash": session_hash}).encode()


def test_two_browsers_and_raw_http_get_nothing_of_a_session(tmp_path):
    sync_playwright, expect = _playwright()
    work, inputs = tmp_path / "work", tmp_path / "inputs"
    inputs.mkdir()
    work.mkdir()
    shutil.copytree(FIXTURE_RUN, work / "run")
    images, _ = examples([(120, 90)])
    queries, _ = examples([(80, 60)], seed=7)
    Image.fromarray(images[0]).save(inputs / "example.png")
    Image.fromarray(queries[0]).save(inputs / "query.png")
    (inputs / "notes.png").write_text("not a picture")
    flags = ["--checkpoint", "run", "--serve_dir", "page_output"]
    with page_process(flags, cwd=work) as server, sync_playwright() as p:
        browser, page_a = open_page(p, server.url)
        context_a = page_a.context
        seen = []  # every request A's page makes, and the status of its file requests
        page_a.on("request", lambda r: seen.append(("request", r.url, r.post_data)))
        page_a.on("response", lambda r: seen.append(("response", r.url, r.status)))
        # A non-image as the mask: one line on the page, no traceback, no server path.
        put_in_editor(page_a, expect, str(inputs / "example.png"))
        page_a.set_input_files("#mask-upload input[type=file]", str(inputs / "notes.png"))
        page_a.wait_for_timeout(1000)
        page_a.click("#add-example")
        expect(page_a.locator("#status")).to_contain_text(
            "The uploaded mask notes.png is not an image", timeout=60_000)
        assert "Traceback" not in page_a.locator("#status").inner_text()
        page_a.reload()  # a new session: what follows is its own
        page_a.wait_for_selector("#segment", timeout=60_000)
        seen.clear()
        add_example(page_a, expect, str(inputs / "example.png"), number=1)
        page_a.set_input_files("#images input[type=file]", str(inputs / "query.png"))
        expect(page_a.locator("#status")).to_contain_text("1 image(s) to segment",
                                                          timeout=60_000)
        page_a.click("#segment")
        expect(page_a.locator("#status")).to_contain_text("Run 1: segmented 1 image(s)",
                                                          timeout=300_000)
        expect(page_a.locator("#masks-zip a").first).to_be_visible(timeout=30_000)
        downloads = [page_a.locator(f"#{box} a").first.get_attribute("href")
                     for box in ("masks-zip", "weights-zip")]
        files = sorted({url for kind, url, status in seen if kind == "response"
                        and "/file=" in url and status == 200} |
                       {server.url + href if href.startswith("/") else href
                        for href in downloads})
        hashes = {m for kind, url, body in seen if kind == "request" for m in
                  re.findall(r"session_hash=([\w-]+)", url) +
                  re.findall(r"/heartbeat/([\w-]+)", url) +
                  re.findall(r'"session_hash":\s*"([\w-]+)"', body or "")}
        assert len(hashes) == 1 and len(files) >= 4, (hashes, files)  # galleries, zips, uploads
        session_hash = hashes.pop()
        folders = [d for d in os.listdir(work / "page_output") if not d.startswith(".")]
        assert len(folders) == 1  # the refused example wrote nothing
        folder = folders[0]
        assert re.fullmatch(r"[0-9a-f]{32}", folder) and folder != session_hash
        # A itself reads every file it was sent.
        assert all(context_a.request.get(url).status == 200 for url in files)
        # Browser B: another cookie jar. Nothing of A's, and its own session is empty.
        context_b = browser.new_context()
        page_b = context_b.new_page()
        page_b.goto(server.url, wait_until="load")
        page_b.wait_for_selector("#segment", timeout=60_000)
        assert [context_b.request.get(url).status for url in files] == [403] * len(files)
        assert [_raw(url) for url in files] == [403] * len(files)
        for status in (context_b.request.post(f"{server.url}/gradio_api/queue/join",
                                              data=_join(session_hash),
                                              headers={"Content-Type": "application/json"}
                                              ).status,
                       _raw(f"{server.url}/gradio_api/queue/join", _join(session_hash)),
                       context_b.request.get(f"{server.url}/gradio_api/queue/data?"
                                             f"session_hash={session_hash}").status,
                       _raw(f"{server.url}/gradio_api/heartbeat/{session_hash}")):
            assert status == 403
        page_b.click("#segment")
        expect(page_b.locator("#status")).to_contain_text("Add at least one example",
                                                          timeout=60_000)
        # No file under --serve_dir by its path, to anyone, A included.
        for name in ("masks.zip", "examples/1.png", "weights/LAST"):
            direct = f"{server.url}/gradio_api/file={work / 'page_output' / folder / name}"
            assert context_a.request.get(direct).status == 403
            assert _raw(direct) == 403
        # The downloads name nothing of the session.
        for url in files:
            if url.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(context_a.request.get(url).body())) as archive:
                    for member in archive.namelist():
                        content = archive.read(member) + member.encode()
                        assert session_hash.encode() not in content, member
                        assert folder.encode() not in content, member
        context_b.close()
        context_a.close()  # A leaves: its session's memory is freed
        line = server.wait_for("A browser left: its session's examples", timeout=60)
        assert re.search(r"\(\d+\.\d MB\) are freed", line)
        browser.close()
