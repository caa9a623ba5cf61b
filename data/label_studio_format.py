"""Label Studio's mask formats: brush RLE results, polygon results, and the tasks of a JSON
export (or of its API) as labelled images.

A brush result holds a mask as Label Studio's own RLE of the mask painted as RGBA; it is encoded
and decoded by label-studio-sdk's converter (`label_studio_sdk.converter.brush`), never here. A
polygon result's points are percentages of the image's size; they are rasterised by pycocotools,
as COCO polygons are (continuous coordinates: pixel i spans [i, i + 1)).

    result = brush_result(mask, "camel", from_name="tag", to_name="image")
    assert (brush_mask(result) == mask).all()
    for task in read_label_studio_export("export.json", label="camel"):
        task.task_id, task.image, task.mask()
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask

from data.annotations import as_mask
from errors import UserError

BRUSH_TYPES = ("brushlabels", "brush")
POLYGON_TYPES = ("polygonlabels", "polygon")
ALPHA_THRESHOLD = 128  # a painted pixel's alpha: the mask rule's threshold on 0..255 values


def _brush_codec():
    """label-studio-sdk's brush codec, imported on first use: importing the converter package
    loads nltk and lxml (about 1.5 s), which most of the project never needs."""
    from label_studio_sdk.converter import brush
    return brush


def brush_result(mask, label: str, *, from_name: str, to_name: str) -> dict:
    """A Label Studio `brushlabels` result holding a mask at its own size.

    Args:
        mask: uint8 {0, 1} (H, W) (0/255 and bool too), at the image's original size.
        label: the label's value in the labelling config (<Label value=...>).
        from_name: the BrushLabels tag's name; to_name: the Image tag's name.

    Returns:
        the result dict (value.format "rle"), as Label Studio stores a painted brush region.
    """
    mask = as_mask(mask, f"the {label!r} brush mask")
    height, width = mask.shape
    # Painted pixels are opaque white in all four RGBA channels, as Label Studio paints them.
    rle = _brush_codec().mask2rle((mask * 255).astype(np.uint8))
    return {"type": "brushlabels", "from_name": from_name, "to_name": to_name,
            "original_width": int(width), "original_height": int(height), "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]}}


def label_studio_predictions(masks, label: str, *, from_name: str = "tag",
                             to_name: str = "image", data_key: str = "image",
                             model_version: str = "metaseg") -> list:
    """Label Studio tasks that carry masks as predictions (pre-labels), to import as JSON.

    Args:
        masks: image reference (the task's data.image: a URL or a path Label Studio serves)
            -> its mask.
        label: the BrushLabels label; from_name, to_name: the config's tag names.
        data_key: the task data's image key (<Image value="$image">).
        model_version: the predictions' model version.

    Returns:
        [{"data": {"image": ref}, "predictions": [{"model_version", "result": [brush]}]}]; an
        empty mask gives a prediction without a region.
    """
    return [prediction_task(ref, as_mask(mask, f"the mask of {ref!r}"), label,
                            from_name=from_name, to_name=to_name, data_key=data_key,
                            model_version=model_version) for ref, mask in masks.items()]


def prediction_task(ref: str, mask: np.ndarray, label: str, *, from_name: str = "tag",
                    to_name: str = "image", data_key: str = "image",
                    model_version: str = "metaseg") -> dict:
    """One Label Studio task carrying `mask` as its pre-label (none when the mask is empty)."""
    result = [brush_result(mask, label, from_name=from_name, to_name=to_name)] \
        if mask.any() else []
    return {"data": {data_key: ref},
            "predictions": [{"model_version": model_version, "result": result}]}


def _result_size(result: dict, where: str) -> tuple[int, int] | None:
    """(height, width) a result was drawn at, or None when it does not say."""
    height, width = result.get("original_height"), result.get("original_width")
    if height is None and width is None:
        return None
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise UserError(f"{where}: original_width / original_height must be positive integers "
                        f"(received {width!r} / {height!r}); export the task again.")
    return height, width


def brush_mask(result: dict, where: str = "the brush result", size=None) -> np.ndarray:
    """Decode a `brushlabels` (or `brush`) result to a mask.

    Args:
        result: the result dict (value.format "rle", value.rle the RLE bytes as integers).
        where: how to name it in an error (e.g. "task 12, annotation 3").
        size: (height, width) to use when the result does not carry original_height/width.

    Returns:
        uint8 {0, 1} (H, W): the pixels painted with alpha >= ALPHA_THRESHOLD.

    Raises:
        UserError: not RLE, or an RLE that does not decode to the result's size.
    """
    value = result.get("value") if isinstance(result, dict) else None
    if not isinstance(value, dict) or value.get("format", "rle") != "rle" or \
            not isinstance(value.get("rle"), list):
        raise UserError(f"{where}: a brush region needs value.format 'rle' and value.rle (a list "
                        f"of integers); export it again from Label Studio.")
    height, width = _result_size(result, where) or size or (None, None)
    if height is None:
        raise UserError(f"{where}: a brush region needs original_width and original_height.")
    try:
        flat = _brush_codec().decode_rle(bytes(value["rle"]))
    except (ValueError, IndexError, TypeError) as e:
        raise UserError(f"{where}: its brush RLE cannot be decoded ({e}); export it again.") \
            from e
    if flat.size != height * width * 4:
        raise UserError(f"{where}: its brush RLE holds {flat.size} values but a {width}x{height} "
                        f"RGBA image has {height * width * 4}; export it again.")
    alpha = flat.reshape(height, width, 4)[..., 3]
    return (alpha >= ALPHA_THRESHOLD).astype(np.uint8)


def polygon_mask(result: dict, where: str = "the polygon result", size=None) -> np.ndarray:
    """Rasterise a `polygonlabels` (or `polygon`) result: points in percent of the image's size.

    Args:
        result: the result dict (value.points [[x, y], ...], x and y in 0..100).
        where: how to name it in an error.
        size: (height, width) to use when the result does not carry original_height/width.

    Returns:
        uint8 {0, 1} (H, W).

    Raises:
        UserError: fewer than 3 points, points that are not number pairs, or no size.
    """
    points = (result.get("value") or {}).get("points") if isinstance(result, dict) else None
    height, width = _result_size(result, where) or size or (None, None)
    if height is None:
        raise UserError(f"{where}: a polygon region needs original_width and original_height.")
    try:
        xy = np.asarray(points, np.float64)
    except (TypeError, ValueError):
        xy = np.zeros((0,))
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3 or not np.isfinite(xy).all():
        raise UserError(f"{where}: value.points must be at least 3 [x, y] pairs (percent of the "
                        f"image's size); export it again.")
    flat = (xy * [width / 100.0, height / 100.0]).ravel().tolist()
    return coco_mask.decode(coco_mask.frPyObjects([flat], height, width))[..., 0]


def _labels(result: dict) -> list:
    """The labels a region carries (none for plain `brush` / `polygon` regions)."""
    return list((result.get("value") or {}).get(result.get("type"), None) or [])


@dataclass(frozen=True)
class LabelledTask:
    """A Label Studio task's image and the regions of its newest annotation.

    Args:
        task_id: the task's id (None when the export has none).
        image: the task's image reference (an http(s) URL or a /data/... path).
        regions: the brush and polygon results of the chosen label.
        where: how to name the task in an error.
    """

    task_id: int | None
    image: str
    regions: tuple
    where: str

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) the regions were drawn at, or None when there is none."""
        sizes = {_result_size(r, self.where) for r in self.regions} - {None}
        if len(sizes) > 1:
            raise UserError(f"{self.where}: its regions were drawn at different image sizes "
                            f"{sorted(sizes)} (height, width); annotate it again.")
        return sizes.pop() if sizes else None

    def mask(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """The union of the regions as one mask.

        Args:
            height, width: the image's size (needed only when no region gives it; when both
                do, they must agree).

        Returns:
            uint8 {0, 1} (H, W); all zero for an annotation without regions.

        Raises:
            UserError: no size known, or regions drawn at another size than the image's.
        """
        size = self.size
        if height is not None and size is not None and size != (height, width):
            raise UserError(f"{self.where}: its regions were drawn on a {size[1]}x{size[0]} "
                            f"image but the image is {width}x{height}; annotate it again on "
                            f"this image.")
        size = size or ((height, width) if height is not None else None)
        if size is None:
            raise UserError(f"{self.where}: its annotation has no region, so its size is "
                            f"unknown; pass the image's height and width.")
        mask = np.zeros(size, np.uint8)
        for i, region in enumerate(self.regions):
            decode = brush_mask if region.get("type") in BRUSH_TYPES else polygon_mask
            mask |= decode(region, f"{self.where}, region {i}", size)
        return mask


def _image_ref(task: dict, data_key: str | None, where: str) -> str:
    data = task["data"]
    if data_key is not None:
        if not isinstance(data.get(data_key), str):
            raise UserError(f"{where}: its data has no {data_key!r} image (keys: "
                            f"{', '.join(map(str, data))}); pass the key of <Image value=$...>.")
        return data[data_key]
    if isinstance(data.get("image"), str):
        return data["image"]
    refs = [v for v in data.values() if isinstance(v, str)]
    if len(refs) != 1:
        raise UserError(f"{where}: cannot tell which of its data ({', '.join(map(str, data))}) "
                        f"is the image; pass data_key, the key of <Image value=$...>.")
    return refs[0]


def label_studio_tasks(tasks, *, label: str | None = None, data_key: str | None = None,
                       where: str = "the export") -> list[LabelledTask]:
    """The annotated tasks of a Label Studio JSON export (or of its API), as labelled images.

    Each task's newest annotation that was not skipped (the highest id) is used; its brush and
    polygon regions of `label` make its mask. Tasks without such an annotation are left out.

    Args:
        tasks: the export's list of tasks ({"id", "data", "annotations": [{"result": ...}]}).
        label: the label to read; None reads every region when all carry one label (or none).
        data_key: the task data's image key (<Image value="$key">); None: "image", else the
            only text value.
        where: how to name the source in errors (e.g. the file).

    Returns:
        LabelledTask per annotated task, in the export's order.

    Raises:
        UserError: not a list of tasks, an annotation without a result list, several labels
            and none chosen; the message names the task.
    """
    if not isinstance(tasks, list):
        raise UserError(f"{where} is not a list of tasks; export the project as JSON.")
    out, labels_seen = [], set()
    for i, task in enumerate(tasks):
        task_where = f"{where}, task {task.get('id', i) if isinstance(task, dict) else i}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or \
                not isinstance(task.get("annotations", []), list):
            raise UserError(f"{task_where} is not a task with 'data' and an 'annotations' "
                            f"list; export the project as JSON (not JSON-MIN).")
        done = [a for a in task.get("annotations", []) if isinstance(a, dict)
                and not a.get("was_cancelled")]
        if not done:
            continue
        annotation = max(done, key=lambda a: a.get("id") or 0)
        results = annotation.get("result")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise UserError(f"{task_where}, annotation {annotation.get('id')}: 'result' must "
                            f"be a list of regions; export it again.")
        regions = [r for r in results if r.get("type") in BRUSH_TYPES + POLYGON_TYPES
                   and (label is None or label in _labels(r))]
        labels_seen.update(name for r in regions for name in _labels(r))
        out.append(LabelledTask(task.get("id"), _image_ref(task, data_key, task_where),
                                tuple(regions), f"{task_where}, annotation {annotation.get('id')}"))
    if label is None and len(labels_seen) > 1:
        raise UserError(f"{where} has regions of {len(labels_seen)} labels "
                        f"({', '.join(sorted(labels_seen))}); choose one (label=NAME).")
    return out


def read_label_studio_export(path: str, *, label: str | None = None,
                             data_key: str | None = None) -> list[LabelledTask]:
    """The annotated tasks of a Label Studio JSON export file (see `label_studio_tasks`).

    Args:
        path: the .json file (Export > JSON).
        label: the label to read; None when the project has one.
        data_key: the task data's image key; None guesses it.

    Returns:
        LabelledTask per annotated task.
    """
    try:
        with open(path) as f:
            tasks = json.load(f)
    except OSError as e:
        raise UserError(f"Cannot read Label Studio export {path!r}: {e.strerror}.") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"Label Studio export {path!r} is not valid JSON ({e}); export the "
                        f"project again as JSON.") from e
    return label_studio_tasks(tasks, label=label, data_key=data_key,
                              where=f"Label Studio export {path!r}")
