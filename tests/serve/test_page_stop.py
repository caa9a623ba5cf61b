"""The page stops cleanly and stays bounded, on a real `run_metasegnet.py --serve`:

* SIGTERM or Ctrl-C (SIGINT) during a Segment press: the press is abandoned at its next step,
  the process exits 0 (SIGTERM) or 130 (Ctrl-C) without a traceback or a crash, and the session
  folder holds its examples and nothing of the press (no results, weights, zips, staging);
* at start, the folders of sessions idle longer than --serve_keep_hours (left by an earlier
  server) are removed and the others kept.
Skips, saying why, only where no browser can be had."""
import os
import shutil
import signal
import time

import pytest
from PIL import Image

from tests.fixtures.page_driver import add_example, open_page, page_process
from tests.segmenter.test_segmenter_api import FIXTURE_RUN, examples
from tests.serve.test_page_browser import _playwright


@pytest.mark.parametrize("number, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_during_a_press_abandons_it_and_exits_cleanly(tmp_path, number, status):
    sync_playwright, expect = _playwright()
    work, inputs = tmp_path / "work", tmp_path / "inputs"
    inputs.mkdir()
    shutil.copytree(FIXTURE_RUN, work / "run")
    images, _ = examples([(120, 90)])
    Image.fromarray(images[0]).save(inputs / "example.png")
    out = work / "page_output"
    two_days_ago = time.time() - 48 * 3600
    for name, when in (("earlier_idle", two_days_ago), ("earlier_recent", time.time())):
        (out / name / "examples").mkdir(parents=True)
        (out / name / "examples" / "1.png").write_bytes(b"png")
        for path in (out / name / "examples" / "1.png", out / name / "examples", out / name):
            os.utime(path, (when, when))
    # 1000 steps: the press adapts for many seconds, in steps reported as it goes.
    flags = ["--checkpoint", "run", "--serve_dir", "page_output", "--eval-iters", "1000",
             "--serve_keep_hours", "24"]
    with page_process(flags, cwd=work) as server, sync_playwright() as p:
        assert sorted(d for d in os.listdir(out) if not d.startswith(".")) == ["earlier_recent"]
        browser, page = open_page(p, server.url)
        add_example(page, expect, str(inputs / "example.png"), number=1)
        page.set_input_files("#images input[type=file]", str(inputs / "example.png"))
        expect(page.locator("#status")).to_contain_text("1 image(s) to segment", timeout=60_000)
        page.click("#segment")
        expect(page.locator("#status")).to_contain_text("Adapting: step", timeout=60_000)
        server.process.send_signal(number)
        assert server.process.wait(timeout=120) == status
        output = server.output()
        browser.close()
    assert f"Stopping the page ({signal.Signals(number).name})" in output
    assert "Traceback" not in output and "Segmentation fault" not in output, output
    session = [d for d in os.listdir(out) if not d.startswith(".") and d != "earlier_recent"]
    assert len(session) == 1
    assert sorted(os.listdir(out / session[0])) == ["examples"]  # nothing of the press
