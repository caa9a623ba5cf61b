"""`run_metasegnet.py --serve` in a real headless browser (Debian's chromium, driven by Playwright):
add two examples with a painted stroke each, add an image, press Segment, wait for the gallery,
download the masks and check the mask has the image's size; nothing is written outside the
output folder. Skips, saying why, only where no browser can be had."""
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.page_driver import CHROMIUM, add_example, open_page, page_server
from tests.segmenter.test_segmenter_api import FIXTURE_RUN, examples


def _playwright():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as e:
        pytest.skip(f"the Playwright package is not installed ({e}); ./test.sh installs it")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
    return sync_playwright, expect


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root)
            for d, _, names in os.walk(root) for f in names}


def test_paint_two_examples_segment_and_download(tmp_path):
    sync_playwright, expect = _playwright()
    work, home, tmp, inputs = (tmp_path / name for name in ("work", "home", "tmp", "inputs"))
    for folder in (work, home, tmp, inputs):
        folder.mkdir()
    shutil.copytree(FIXTURE_RUN, work / "run")
    images, _ = examples([(120, 90), (100, 100)])
    queries, _ = examples([(110, 70)], seed=7)
    for name, image in zip(("example1", "example2", "query"), images + queries):
        Image.fromarray(image).save(inputs / f"{name}.png")
    flags = ["--checkpoint", "run", "--serve_dir", "page_output"]
    with page_server(flags, cwd=work, env={"HOME": str(home), "TMPDIR": str(tmp)}) as \
            (url, printed), sync_playwright() as p:
        assert any("Init run: FOMAML, 2 meta-iterations" in line for line in printed)
        browser, page = open_page(p, url)
        expect(page.locator("#init")).to_contain_text("FOMAML, 2 meta-iterations")
        for number in (1, 2):
            add_example(page, expect, str(inputs / f"example{number}.png"), number=number)
        page.set_input_files("#images input[type=file]", str(inputs / "query.png"))
        expect(page.locator("#status")).to_contain_text("1 image(s) to segment", timeout=60_000)
        page.locator("#mask-formats").get_by_label("coco").check()  # png stays checked
        page.click("#segment")
        expect(page.locator("#status")).to_contain_text(
            "Run 1: segmented 1 image(s) from 2 example(s)", timeout=300_000)
        expect(page.locator("#results")).to_contain_text(re.compile(r"query: \d+\.\d%"))
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        with page.expect_download() as download:
            page.locator("#masks-zip a").first.click()
        download.value.save_as(str(tmp_path / "masks.zip"))
        browser.close()
    with zipfile.ZipFile(tmp_path / "masks.zip") as archive:
        assert sorted(archive.namelist()) == ["instances.json", "query_mask.png"]
        with archive.open("query_mask.png") as f, Image.open(f) as mask:
            assert mask.size == (110, 70) and set(np.unique(mask)) <= {0, 255}
    with Image.open(tmp_path / "page.png") as shot:
        assert shot.size[0] >= 1400
    print(f"screenshot of the page: {tmp_path / 'page.png'}")
    # Nothing outside the output folder: the run and the output folder are all the work folder
    # holds and the temporary folder is empty. The home folder gets only what importing Keras
    # and Matplotlib writes there once per user (its config, its font list), as every command
    # of the tool does.
    assert {p.split(os.sep)[0] for p in _files(work)} == {"run", "page_output"}
    assert _files(tmp) == set(), _files(tmp)
    caches = (os.path.join(".keras", "keras.json"), os.path.join(".cache", "matplotlib", ""))
    assert all(path.startswith(caches) for path in _files(home)), _files(home)
    sessions = [d for d in os.listdir(work / "page_output") if not d.startswith(".")]
    assert len(sessions) == 1
    assert {"masks.zip", "weights.zip"} <= set(os.listdir(work / "page_output" / sessions[0]))
