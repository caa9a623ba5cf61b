"""What fit and predict accept: arrays and PIL images of any size and mode, masks by the mask rule."""
import numpy as np
import pytest
from PIL import Image

from errors import UserError
from segmenter.images import mask_warnings
from segmenter.images import as_list, as_pair, as_rgb


def _photo(height=30, width=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _square(height=30, width=50):
    mask = np.zeros((height, width), np.uint8)
    mask[5:20, 10:30] = 1
    return mask


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_pil_images_of_any_mode_become_rgb(mode):
    photo = Image.fromarray(_photo())
    image = photo.convert(mode)
    rgb = as_rgb(image)
    assert rgb.shape == (30, 50, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.asarray(image.convert("RGB")))


def test_arrays_grey_float_and_16_bit():
    photo = _photo()
    np.testing.assert_array_equal(as_rgb(photo), photo)
    grey = photo[..., 0]
    np.testing.assert_array_equal(as_rgb(grey), np.repeat(grey[..., None], 3, axis=-1))
    # A float image in 0..1 is scaled, one in 0..255 is rounded.
    np.testing.assert_array_equal(as_rgb(photo / 255.0), photo)
    np.testing.assert_array_equal(as_rgb(photo.astype(np.float32)), photo)
    deep = Image.fromarray((grey.astype(np.uint16) * 257), mode="I;16")
    np.testing.assert_array_equal(as_rgb(deep)[..., 0], grey)


def test_exif_orientation_is_applied_to_an_image_and_its_mask(tmp_path):
    photo, mask = _photo(20, 40), _square(20, 40) * 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed 20 wide, 40 high
    Image.fromarray(photo).save(tmp_path / "a.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "a.jpg") as image:
        rgb, binary = as_pair(image, Image.fromarray(mask))
        assert as_rgb(image).shape == (40, 20, 3)
    assert rgb.shape == (40, 20, 3) and binary.shape == (40, 20)
    np.testing.assert_array_equal(binary, np.rot90(mask > 0, k=-1).astype(np.uint8))


@pytest.mark.parametrize("kind", ["0/255", "0/1", "bool", "float", "rgb", "rgba", "palette",
                                  "1bit"])
def test_masks_follow_the_converters_rule(kind):
    square = _square()
    masks = {"0/255": square * 255, "0/1": square, "bool": square.astype(bool),
             "float": square.astype(np.float32),
             "rgb": np.stack([square * 200, square * 0, square * 30], -1).astype(np.uint8),
             "rgba": np.dstack([np.full(square.shape + (3,), 255, np.uint8), square * 255]),
             "palette": Image.fromarray(square * 255).convert("P"),
             "1bit": Image.fromarray(square * 255).convert("1")}
    _, binary = as_pair(_photo(), masks[kind])
    np.testing.assert_array_equal(binary, square)


def test_bad_values_are_refused_naming_the_example():
    with pytest.raises(UserError, match="example 2: the mask is 40x30 but its image is 50x30"):
        as_pair(_photo(), _square(30, 40), "example 2")
    with pytest.raises(UserError, match="pass a numpy array or a PIL image"):
        as_pair("photo.jpg", _square())
    with pytest.raises(UserError, match="NaN"):
        as_rgb(np.full((4, 4, 3), np.nan))
    with pytest.raises(UserError, match="shape"):
        as_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(UserError, match="not a path"):
        as_list("photo.jpg", "images")


def test_lists_and_stacks():
    photo = _photo()
    assert len(as_list(photo, "images")) == 1
    assert len(as_list(np.stack([photo] * 3), "images")) == 3
    assert len(as_list(np.stack([_square()] * 3), "masks", count=3)) == 3
    assert len(as_list(_square()[None], "masks", count=1)) == 1
    assert len(as_list([Image.fromarray(photo)] * 2, "images")) == 2


def test_empty_and_full_masks_are_named():
    square = _square()
    lines = mask_warnings([square, np.zeros_like(square), np.ones_like(square)])
    assert len(lines) == 2
    assert lines[0].startswith("example 2's mask is empty")
    assert lines[1].startswith("example 3's mask covers the whole image")
