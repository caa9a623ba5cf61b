"""Label Studio with metaseg's ML backend as a person meets it: seconds from saving the examples
to the pre-labels of the other photos, and (with --screenshot) docs/images/label_studio.png.

    .venv/bin/python benchmarks/bench_label_studio.py --checkpoint tests/fixtures/run_2026_12 \
        --steps 300 --learning_rate 0.2 [--examples DIR] [--num_examples 3] \
        [--screenshot docs/images/label_studio.png]

Starts Label Studio from .ls-venv/ (tests/fixtures/label_studio.py: SQLite in a temporary
folder, 127.0.0.1) and the backend (serve.label_studio.launch) on free ports, makes a BrushLabels
project of the `.jpg` photos of `--examples` (default: the real photos' davis_camel, the first 8),
connects the backend, saves the first `--num_examples` masks as brush annotations through
Label Studio's API, and times until Label Studio has stored the pre-labels of the rest
("Retrieve Predictions"). With --screenshot, headless chromium (Debian's, driven by Playwright)
logs in and opens the first photo without an annotation, showing metaseg's pre-label.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from PIL import Image  # noqa: E402

from benchmarks._common import load, write_json  # noqa: E402
from data.label_studio_format import brush_result  # noqa: E402
from data.masks import binarize_mask  # noqa: E402
from segmenter import from_checkpoint  # noqa: E402
from serve.label_studio import launch  # noqa: E402
from tests.fixtures import label_studio, real_data  # noqa: E402
from tests.fixtures.page_driver import BROWSER_ARGS, CHROMIUM  # noqa: E402
from tests.fixtures.ports import free_ports  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image" zoom="true"/>'
          '<BrushLabels name="tag" toName="image"><Label value="{label}" background="#ff3b30"/>'
          '</BrushLabels></View>')


def _photos(folder: str, count: int) -> list[str]:
    paths = glob.glob(os.path.join(folder, "*.jpg"))
    return sorted(paths, key=lambda p: int(os.path.splitext(os.path.basename(p))[0]))[:count]


def _screenshot(url: str, project: int, task: int, path: str) -> None:
    """Log in with chromium, open the task in the labelling view, save the page as 256 colours."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(f"{url}/user/login/")
        page.fill("input[name=email]", label_studio.USER)
        page.fill("input[name=password]", label_studio.PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda address: "/user/login" not in address, timeout=60_000)
        page.goto(f"{url}/projects/{project}/data?task={task}")
        page.wait_for_selector("canvas", timeout=120_000)
        page.wait_for_timeout(8000)  # the image, then the pre-label's brush layer, are drawn
        page.screenshot(path=path)
        browser.close()
    # 256 colours keep the docs' picture readable at a fraction of the bytes
    with Image.open(path) as shot:
        shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--examples", default=os.path.join(real_data.real_fewshot_dir(),
                                                           "davis_camel"))
    parser.add_argument("--num_photos", type=int, default=8)
    parser.add_argument("--num_examples", type=int, default=3)
    parser.add_argument("--screenshot", default=None)
    parser.add_argument("--json", default="benchmarks/results/label_studio.json")
    args = parser.parse_args()
    reason = label_studio.missing_reason()
    if reason:
        raise SystemExit(f"bench_label_studio.py: {reason}")
    photos = _photos(args.examples, args.num_photos)
    if len(photos) <= args.num_examples:
        raise SystemExit(f"bench_label_studio.py: {args.examples} has {len(photos)} .jpg photos; "
                         f"it needs more than --num_examples {args.num_examples}.")
    overrides = {k: v for k, v in (("steps", args.steps), ("learning_rate", args.learning_rate))
                 if v is not None}
    label = os.path.basename(os.path.normpath(args.examples)).replace("davis_", "")
    with tempfile.TemporaryDirectory() as work:
        studio_port, backend_port = free_ports(2)
        start = time.perf_counter()
        studio = label_studio.start(os.path.join(work, "label_studio"), studio_port)
        started = time.perf_counter() - start
        server = None
        try:
            os.environ.update(LABEL_STUDIO_URL=studio.url,
                              LABEL_STUDIO_API_KEY=studio.personal_token)
            init = os.path.join(work, "init")  # a copy: the init is only read, never risk it
            shutil.copytree(args.checkpoint, init)
            server = launch(from_checkpoint(init, **overrides), "127.0.0.1", backend_port,
                            block=False)
            project = studio.create_project(f"metaseg: {label}", CONFIG.format(label=label))
            tasks = studio.import_images(project, photos)
            studio.connect_backend(project, f"http://127.0.0.1:{backend_port}")
            start = time.perf_counter()
            for task, photo in zip(tasks[:args.num_examples], photos):
                with Image.open(os.path.splitext(photo)[0] + ".png") as mask:
                    studio.annotate(task["id"], [brush_result(
                        binarize_mask(mask), label, from_name="tag", to_name="image")])
            saved = time.perf_counter() - start
            rest = [t["id"] for t in tasks[args.num_examples:]]
            studio.retrieve_predictions(project, rest)
            pre_labelled = time.perf_counter() - start
            versions = {p["model_version"] for t in rest for p in studio.predictions(t)}
            if args.screenshot:
                _screenshot(studio.url, project, rest[0], args.screenshot)
        finally:
            if server is not None:
                server.should_exit = True
            studio.stop()
    print(f"Label Studio answered in {started:.0f} s; {args.num_examples} annotations saved in "
          f"{saved:.1f} s; pre-labels of {len(rest)} photos stored {pre_labelled:.1f} s after the "
          f"first save ({', '.join(sorted(versions))}); {load()}")
    write_json(args.json, {"checkpoint": args.checkpoint, "overrides": overrides,
                           "examples": args.num_examples, "pre_labelled": len(rest),
                           "label_studio_start_s": started, "saves_s": saved,
                           "pre_labels_s": pre_labelled})


if __name__ == "__main__":
    main()
