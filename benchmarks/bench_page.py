"""The page's speed as a person meets it: seconds from pressing Segment to the gallery.

    .venv/bin/python benchmarks/bench_page.py --checkpoint demo_runs/reptile \
        --examples DIR [--images DIR ...] [--num_examples 5] [--screenshot page.png]

Starts `run_metasegnet.py --serve` on the init, opens the page in headless chromium (Debian's,
driven by Playwright), adds the first `--num_examples` pairs of `--examples` (`<n>.jpg` with its
`<n>.png` mask uploaded), adds every `.jpg` of `--images` (default: the rest of `--examples`),
presses Segment and times it until the gallery is shown; twice (the second press reuses the
compiled steps). With `--screenshot`, one more photo is left in the editor with a painted stroke
and the page is saved as a PNG (the README's picture).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from PIL import Image  # noqa: E402

from benchmarks._common import load, write_json  # noqa: E402
from tests.fixtures.page_driver import add_example, open_page, page_server, \
    paint_stroke, put_in_editor  # noqa: E402


def _natural(names):
    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t
                                        for t in re.split(r"(\d+)", s)])


def _segment(page, expect, run: int, count: int, examples: int) -> float:
    start = time.perf_counter()
    page.click("#segment")
    expect(page.locator("#status")).to_contain_text(
        f"Run {run}: segmented {count} image(s) from {examples} example(s)", timeout=900_000)
    expect(page.locator("#results img").nth(count - 1)).to_be_visible(timeout=60_000)
    return time.perf_counter() - start


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--examples", required=True, help="a class folder: <n>.jpg + <n>.png")
    parser.add_argument("--images", nargs="*", default=[], help="folders of images to segment")
    parser.add_argument("--num_examples", type=int, default=5)
    parser.add_argument("--screenshot", default=None)
    parser.add_argument("--json", default="benchmarks/results/page.json")
    args = parser.parse_args()
    stems = _natural(f[:-4] for f in os.listdir(args.examples) if f.endswith(".jpg"))
    pairs = [(os.path.join(args.examples, s + ".jpg"), os.path.join(args.examples, s + ".png"))
             for s in stems]
    chosen, rest = pairs[:args.num_examples], [p[0] for p in pairs[args.num_examples:]]
    images = [os.path.join(d, f) for d in args.images for f in _natural(os.listdir(d))
              if f.endswith(".jpg")] if args.images else rest
    # From the repository, as a user runs it (the page shows the init's path as given).
    with tempfile.TemporaryDirectory() as work, \
            page_server(["--checkpoint", args.checkpoint, "--serve_dir", os.path.join(work, "out")],
                        cwd=ROOT) as (url, _), sync_playwright() as p:
        browser, page = open_page(p, url)
        for number, (image, mask) in enumerate(chosen, 1):
            add_example(page, expect, image, mask=mask, number=number)
        page.set_input_files("#images input[type=file]", images)
        expect(page.locator("#status")).to_contain_text(f"{len(images)} image(s) to segment",
                                                        timeout=120_000)
        seconds = [_segment(page, expect, run, len(images), len(chosen)) for run in (1, 2)]
        if args.screenshot:
            put_in_editor(page, expect, rest[0] if rest else chosen[0][0])
            paint_stroke(page, length=96)
            page.wait_for_timeout(1000)
            page.screenshot(path=args.screenshot, full_page=True)
            # 256 colours keep the README's picture readable at a third of the bytes
            with Image.open(args.screenshot) as shot:
                shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                    args.screenshot, optimize=True)
        browser.close()
    print(f"Segment -> gallery with {len(chosen)} examples and {len(images)} images: "
          f"{seconds[0]:.1f} s (first press), {seconds[1]:.1f} s (second); {load()}")
    write_json(args.json, {"checkpoint": args.checkpoint, "examples": len(chosen),
                           "images": len(images), "seconds": seconds})


if __name__ == "__main__":
    main()
