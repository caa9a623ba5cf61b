"""FSS-1000 folders (`<class>/<n>.jpg` + `<n>.png`) -> TFRecord shards + manifest.json.

    python fss_1000_image_to_tfrecord.py --input_dir FSS-1000 --tfrecord_dir fss_shards

Behaviour (the format itself is documented in data/tfrecord.py):
* Class folders are the sub-folders of --input_dir; if none of them holds images, a single
  sub-folder is descended into (the official archive nests `fewshot_data/<class>/`).
* MTL-Segmentation's FewShotPreprocessing.py layout is read too: `{train,val,test}/images/<class>/`
  with the masks in `{train,val,test}/labels/<class>/`. When every class is in one split, the
  manifest records that split (`"split"`) as the meta-train/val/test classes; classes found in
  several splits are merged and no split is recorded.
* Pairs are matched by file stem (`7.jpg` <-> `7.png`). Images are stored as JPEG (the original
  bytes when already an RGB JPEG of the target size, else re-encoded at quality 95); other sizes are
  resized to --image_size (bilinear image, nearest mask; non-square inputs are stretched).
* Mask rule (one rule for every PNG mode): composite over black (RGBA/LA/P with transparency),
  take the max over R,G,B (16-bit greyscale is scaled to 8 bit); if the whole mask's max is <= 1
  it is a 0/1 mask and foreground = value >= 0.5, else foreground = value >= 128. Anti-aliased,
  0/255, 0/1, coloured and alpha masks all come out as {0,1}.
* One pass checks everything and prints each problem with its path: unreadable image or mask,
  image without mask, mask without image, image/mask size mismatch, empty class folder, class
  with fewer than 2 good pairs. Bad pairs/classes are skipped and counted; --strict exits 2
  before writing anything if there is any problem.
* Output is written into a hidden temporary sibling folder and swapped in only when complete, so
  a rerun replaces the previous output whole and an interrupted run leaves it untouched.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from data.decode import to_rgb
from errors import UserError
from data.masks import binarize_mask
from data.problems import Problem, open_pair
from devices.quiet import quiet_tensorflow

IMAGE_EXTENSIONS = (".jpg", ".jpeg")
MASK_EXTENSION = ".png"
JPEG_QUALITY = 95
PAIRS_PER_SHARD = 500
MIN_PAIRS_PER_CLASS = 2
SEED_SPLITS = ("train", "val", "test")
_SKIP_DIRS = ("__MACOSX",)


class ConversionError(ValueError):
    """--strict found problems; nothing was written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the input; --strict: nothing written.")


@dataclass
class ConversionReport:
    """What a conversion found and wrote."""

    class_root: str
    tfrecord_dir: str
    image_size: int
    classes: dict[str, int] = field(default_factory=dict)   # class -> pairs written
    problems: list[Problem] = field(default_factory=list)
    skipped_pairs: int = 0
    skipped_classes: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_pairs(self) -> int:
        return sum(self.classes.values())


def _natural_key(stem: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def _subfolders(path: str) -> list[str]:
    return sorted(os.path.join(path, d) for d in os.listdir(path)
                  if not d.startswith(".") and d not in _SKIP_DIRS
                  and os.path.isdir(os.path.join(path, d)))


def _holds_pairs(folder: str) -> bool:
    return any(os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS + (MASK_EXTENSION,)
               for f in os.listdir(folder))


def find_class_root(input_dir: str) -> str:
    """The folder whose sub-folders are the classes (input_dir, or a single nested folder).

    Args:
        input_dir: the FSS-1000 root as given.

    Returns:
        path of the folder that holds the class folders.

    Raises:
        FileNotFoundError: input_dir missing. ValueError: no class folders found.
    """
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"--input_dir {input_dir!r} does not exist or is not a folder.")
    root = input_dir
    for _ in range(3):  # e.g. FSS-1000/fewshot_data/<class>/
        subfolders = _subfolders(root)
        if any(_holds_pairs(s) for s in subfolders):
            return root
        if len(subfolders) != 1:
            break
        root = subfolders[0]
    raise ValueError(f"--input_dir {input_dir!r} has no class folders (sub-folders holding "
                     f"<n>.jpg images with <n>.png masks).")


def _encode_pair(image_path: str, mask_path: str, size: int) -> tuple[bytes, bytes] | Problem:
    """Decode, check, binarize, resize and encode one pair; a Problem if it is unusable."""
    pair = open_pair(image_path, mask_path, "mask")
    if isinstance(pair, Problem):
        return pair
    image, mask = pair
    mask_array = binarize_mask(mask)
    if mask.size != (size, size):
        mask_array = np.asarray(Image.fromarray(mask_array).resize((size, size), Image.NEAREST))
    # A rotated image has no format (a new PIL image), so its bytes are never kept as they are.
    if image.format == "JPEG" and image.mode == "RGB" and image.size == (size, size):
        with open(image_path, "rb") as f:  # already what we store: keep the bytes, no re-encoding
            image_bytes = f.read()
    else:
        try:
            rgb = Image.fromarray(to_rgb(image, image_path))
        except UserError as e:
            return Problem(image_path, str(e))
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BILINEAR)
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        image_bytes = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(mask_array).save(buffer, format="PNG")
    return image_bytes, buffer.getvalue()


def _scan_class(folder: str, problems: list[Problem], mask_folder: str | None = None
                ) -> tuple[list[tuple[str, str, str]], int]:
    """(stem, image_path, mask_path) of the complete pairs of one class and the number of stems
    found (paired or not); appends a Problem for each incomplete pair. With `mask_folder` (the
    MTL-Segmentation's labels/<class>/) the masks are read there, as .png or under the image's
    name."""
    images, masks = {}, {}
    listing = [(folder, name) for name in sorted(os.listdir(folder))]
    if mask_folder is not None:
        listing = [(f, n) for f, n in listing
                   if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if os.path.isdir(mask_folder):
            listing += [(mask_folder, n) for n in sorted(os.listdir(mask_folder))]
    for where, name in listing:
        stem, ext = os.path.splitext(name)
        path = os.path.join(where, name)
        if not os.path.isfile(path):
            continue
        if where == mask_folder and ext.lower() in IMAGE_EXTENSIONS + (MASK_EXTENSION,):
            masks[stem] = path
        elif ext.lower() in IMAGE_EXTENSIONS:
            if stem in images:
                problems.append(Problem(path, f"second image for stem {stem!r} "
                                              f"(also {os.path.basename(images[stem])}); ignored"))
                continue
            images[stem] = path
        elif ext.lower() == MASK_EXTENSION:
            masks[stem] = path
    if not images and not masks:
        problems.append(Problem(folder, "empty class folder (no .jpg/.png files)"))
    for stem in sorted(set(images) - set(masks), key=_natural_key):
        problems.append(Problem(images[stem], f"image without mask (expected {stem}.png)"))
    for stem in sorted(set(masks) - set(images), key=_natural_key):
        problems.append(Problem(masks[stem], f"mask without image (expected {stem}.jpg)"))
    pairs = [(stem, images[stem], masks[stem])
             for stem in sorted(set(images) & set(masks), key=_natural_key)]
    return pairs, len(set(images) | set(masks))


def seed_split_folders(input_dir: str) -> dict[str, tuple[str, str]] | None:
    """MTL-Segmentation's FewShotPreprocessing.py layout, if input_dir has it.

    That layout is `{train,val,test}/images/<class>/<n>.jpg` with the masks in
    `{train,val,test}/labels/<class>/` (ahirsharan/MTL-Segmentation FewShotPreprocessing.py,
    dataloader/mdataset_loader.py).

    Args:
        input_dir: the folder given as --input_dir.

    Returns:
        split -> (images folder, labels folder) for each split present, or None.
    """
    found = {}
    for split in SEED_SPLITS:
        images = os.path.join(input_dir, split, "images")
        if os.path.isdir(images):
            found[split] = (images, os.path.join(input_dir, split, "labels"))
    return found or None


def _scan_seed_splits(folders: dict[str, tuple[str, str]], problems: list[Problem]):
    """Pairs of the seed layout; classes found in several splits are merged into one class."""
    pairs, num_stems, split_of = [], {}, {}
    for split, (image_root, label_root) in folders.items():
        if not os.path.isdir(label_root):
            problems.append(Problem(label_root, f"missing: the {split} images in {image_root} "
                                                f"have no labels folder"))
        for folder in _subfolders(image_root):
            name = os.path.basename(folder)
            class_pairs, n = _scan_class(folder, problems, os.path.join(label_root, name))
            num_stems[name] = num_stems.get(name, 0) + n
            split_of.setdefault(name, []).append(split)
            pairs += [(name, stem, i, m) for stem, i, m in class_pairs]
    seen, unique = set(), []  # a stem repeated across a merged class's splits keeps one pair
    for pair in pairs:
        key = (pair[0], pair[1])
        if key in seen:
            problems.append(Problem(pair[2], f"second pair for stem {pair[1]!r} of class "
                                             f"{pair[0]!r} (another split has it); ignored"))
            continue
        seen.add(key)
        unique.append(pair)
    return unique, num_stems, split_of


def _recorded_split(split_of: dict[str, list[str]], written: dict[str, int], log) -> dict | None:
    """The seed folders' split as meta-train/val/test classes, or None when classes overlap."""
    shared = sorted(c for c, splits in split_of.items() if len(splits) > 1)
    if shared:
        log(f"note: {len(shared)} class(es) appear in more than one of {SEED_SPLITS} (e.g. "
            f"{shared[:3]}): FewShotPreprocessing.py splits each class's images, not the "
            f"classes, so no class-level split is recorded and each class's pairs are merged; "
            f"choose the split with --num_test_tasks / --test_tasks_file / --num_val_tasks")
        return None
    return {split: sorted(c for c, s in split_of.items() if s == [split] and c in written)
            for split in SEED_SPLITS}


def _is_our_output(folder: str) -> bool:
    """Whether folder holds a previous conversion: manifest.json with our format marker."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        return False
    from data.tfrecord import FORMAT_NAME  # noqa: PLC0415
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def _check_output(tfrecord_dir: str, class_root: str) -> None:
    """Fail before any work if the output folder cannot or must not be (re)written."""
    out, source = os.path.abspath(tfrecord_dir), os.path.abspath(class_root)
    if out == source or out.startswith(source + os.sep):
        raise ValueError(f"--tfrecord_dir {tfrecord_dir!r} is inside --input_dir; choose a "
                         f"folder outside the dataset.")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise NotADirectoryError(f"--tfrecord_dir {tfrecord_dir!r} exists and is not a folder.")
        if os.listdir(out) and not _is_our_output(out):
            raise ValueError(f"--tfrecord_dir {tfrecord_dir!r} is a non-empty folder that this "
                             f"converter did not write (no manifest.json with its format "
                             f"marker); refusing to replace it. Choose a new or empty folder.")
    ancestor = os.path.dirname(out)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"--tfrecord_dir {tfrecord_dir!r} cannot be created: {ancestor!r} "
                              f"is not a writable folder.")


def _write_output(records: list[tuple[str, str, bytes, bytes]], report: ConversionReport,
                  num_shards: int, manifest: dict) -> None:
    """Write shards + manifest into a temporary sibling folder, then swap it in."""
    import tensorflow as tf  # noqa: PLC0415  (slow import, only needed to write)

    from data.tfrecord import MANIFEST_NAME, serialize_pair, shard_name

    out = os.path.abspath(report.tfrecord_dir)
    parent, base = os.path.dirname(out), os.path.basename(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    umask = os.umask(0o22)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like a mkdir
    old = None
    try:
        shards = []
        name = MANIFEST_NAME
        try:
            for index, chunk in enumerate(np.array_split(np.arange(len(records)), num_shards)):
                name = shard_name(index, num_shards)
                with tf.io.TFRecordWriter(os.path.join(tmp, name)) as writer:
                    for i in chunk:
                        class_name, stem, image_bytes, mask_bytes = records[i]
                        writer.write(serialize_pair(image_bytes, mask_bytes, class_name, stem,
                                                    report.image_size))
                shards.append({"file": name, "num_pairs": int(len(chunk))})
            manifest["shards"] = shards
            name = MANIFEST_NAME
            with open(os.path.join(tmp, MANIFEST_NAME), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
        except (OSError, tf.errors.OpError) as e:  # a full disk: TensorFlow's error, no path
            reason = e.strerror if isinstance(e, OSError) else e.message.split("; ")[-1]
            raise UserError(f"--tfrecord_dir {report.tfrecord_dir!r}: writing {name} failed "
                            f"({reason}); free space on that disk or choose another "
                            f"--tfrecord_dir. Its previous content, if any, is left as it "
                            f"was.") from e
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.replace(out, os.path.join(old, base))
        os.replace(tmp, out)
    except BaseException:
        if old and not os.path.exists(out):  # put the previous output back
            os.replace(os.path.join(old, base), out)
        raise
    finally:
        for leftover in (tmp, old):
            if leftover and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    # Runs killed earlier leave hidden .tmp-/.old- siblings; the new output supersedes them.
    for name in os.listdir(parent):
        if name.startswith((f".{base}.tmp-", f".{base}.old-")):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    report.shards = [s["file"] for s in shards]


def convert(input_dir: str, tfrecord_dir: str, *, image_size: int = 224,
            num_shards: int | None = None, strict: bool = False, log=print) -> ConversionReport:
    """Convert an FSS-1000-layout folder into TFRecord shards and a manifest.json.

    Args:
        input_dir: FSS-1000 root (class folders, possibly nested one level deeper).
        tfrecord_dir: output folder; replaced whole if it holds a previous conversion.
        image_size: side S of the stored square images.
        num_shards: number of shard files; default one per ~500 pairs.
        strict: raise ConversionError, writing nothing, if any problem is found.
        log: callable for progress and problem lines (None = silent).

    Returns:
        ConversionReport (classes and pair counts written, problems, skipped counts, shards).

    Raises:
        FileNotFoundError / ValueError / OSError: missing input, no class folders, output not
            writable or not ours, no usable class. ConversionError: strict and problems found.
    """
    log = log or (lambda _msg: None)
    start = time.time()
    if image_size < 8:
        raise ValueError(f"--image_size must be >= 8. Received: {image_size}")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"--num_shards must be >= 1. Received: {num_shards}")
    seed_folders = seed_split_folders(input_dir) if os.path.isdir(input_dir) else None
    class_root = os.path.abspath(input_dir) if seed_folders else find_class_root(input_dir)
    _check_output(tfrecord_dir, class_root)
    report = ConversionReport(class_root=class_root, tfrecord_dir=tfrecord_dir,
                              image_size=image_size)

    def problem(p: Problem) -> None:
        report.problems.append(p)
        log(f"problem: {p}")

    scan_problems: list[Problem] = []
    pairs = []  # (class_name, stem, image_path, mask_path)
    num_stems = {}  # class -> stems found (paired or not), to count skipped pairs
    split_of = None  # the seed layout: class -> the splits it was found in
    if seed_folders:
        pairs, num_stems, split_of = _scan_seed_splits(seed_folders, scan_problems)
    for folder in _subfolders(class_root) if not seed_folders else ():
        name = os.path.basename(folder)
        class_pairs, num_stems[name] = _scan_class(folder, scan_problems)
        pairs += [(name, stem, image_path, mask_path) for stem, image_path, mask_path in class_pairs]
    log(f"found {len(num_stems)} class folders, {len(pairs)} image/mask pairs in {class_root}")
    for p in scan_problems:
        problem(p)

    good: dict[str, list[tuple[str, str, bytes, bytes]]] = {name: [] for name in num_stems}
    every = max(1, len(pairs) // 10)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
        results = pool.map(lambda pr: _encode_pair(pr[2], pr[3], image_size), pairs)
        for done, ((name, stem, _, _), result) in enumerate(zip(pairs, results), start=1):
            if isinstance(result, Problem):
                problem(result)
            else:
                good[name].append((name, stem) + result)
            if done % every == 0 or done == len(pairs):
                rate = done / max(time.time() - start, 1e-9)
                log(f"  {done}/{len(pairs)} pairs checked ({rate:.0f} pairs/s)")

    records = []
    for name, class_records in good.items():
        if 0 < num_stems[name] and len(class_records) < MIN_PAIRS_PER_CLASS:
            problem(Problem(os.path.join(class_root, name),
                            f"class has {len(class_records)} good pair(s); at least "
                            f"{MIN_PAIRS_PER_CLASS} are needed (support + query); class skipped"))
        if len(class_records) >= MIN_PAIRS_PER_CLASS:
            report.classes[name] = len(class_records)
            records += class_records
        else:
            report.skipped_classes.append(name)
    report.skipped_pairs = sum(num_stems.values()) - len(records)

    if strict and report.problems:
        raise ConversionError(report.problems)
    if not records:
        raise ValueError(f"No class in {class_root!r} has {MIN_PAIRS_PER_CLASS} good pairs; "
                         f"nothing written.")
    num_shards = min(num_shards or -(-len(records) // PAIRS_PER_SHARD), len(records))
    from data.tfrecord import FORMAT_NAME, FORMAT_VERSION  # noqa: PLC0415
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "image_size": image_size, "source": os.path.abspath(class_root),
                "classes": report.classes, "num_classes": len(report.classes),
                "num_pairs": len(records), "image_encoding": "jpeg", "mask_encoding": "png {0,1}",
                "skipped_pairs": report.skipped_pairs,
                "problems": [str(p) for p in report.problems]}
    if split_of is not None:  # data/splits.py uses it when no split flag is given
        manifest["split"] = _recorded_split(split_of, report.classes, log)
    _write_output(records, report, num_shards, manifest)
    report.seconds = time.time() - start
    log(f"done: {len(report.classes)} classes, {report.num_pairs} pairs written to "
        f"{tfrecord_dir} ({len(report.shards)} shards) in {report.seconds:.1f} s; "
        f"{len(report.problems)} problem(s), {report.skipped_pairs} pair(s) skipped, "
        f"{len(report.skipped_classes)} class(es) skipped")
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments (default sys.argv[1:]).

    Returns:
        exit code: 0 done (possibly with skipped bad pairs), 2 error or --strict with problems,
        130 interrupted.
    """
    parser = argparse.ArgumentParser(
        description="Convert an FSS-1000-layout folder (<class>/<n>.jpg + <n>.png) to TFRecords.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="FSS-1000 root folder")
    parser.add_argument("--tfrecord_dir", required=True, help="output folder (replaced whole)")
    parser.add_argument("--image_size", type=int, default=224, help="stored image side")
    parser.add_argument("--num_shards", type=int, default=None,
                        help=f"shard files (default: one per {PAIRS_PER_SHARD} pairs)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 and write nothing if any input problem is found")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ log lines (hidden unless TF_CPP_MIN_LOG_LEVEL "
                             "is set)")
    args = parser.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        convert(args.input_dir, args.tfrecord_dir, image_size=args.image_size,
                num_shards=args.num_shards, strict=args.strict)
    except (OSError, ValueError) as e:  # includes ConversionError (--strict)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: previous output (if any) left intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
