"""vggfeat.data.images: every stored form decodes to 8-bit RGB; bad files raise BadImageError."""
import numpy as np
import pytest
from helpers_features import random_rgb, write_bad_images, write_png
from PIL import Image

from vggfeat.data.images import BadImageError, open_rgb


def test_rgb_png_round_trips(tmp_path):
    pixels = random_rgb(20, 30)
    image = open_rgb(write_png(tmp_path / "a.png", pixels))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = random_rgb(10, 12)[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    rgb = np.asarray(open_rgb(tmp_path / "g.png"))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    pixels = random_rgb(8, 9)
    alpha = np.zeros((8, 9, 1), np.uint8)  # fully transparent: the colours must survive
    Image.fromarray(np.concatenate([pixels, alpha], axis=2), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "a.png")), pixels)


def test_palette_with_transparency(tmp_path):
    image = Image.fromarray(random_rgb(8, 8)).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))[..., :3]
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "p.png")), expected)


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (6, 5), (0, 255, 255, 0))  # no black, full magenta+yellow: red
    cmyk.save(tmp_path / "c.jpg", quality=100)
    rgb = np.asarray(open_rgb(tmp_path / "c.jpg")).astype(int)
    assert rgb.shape == (5, 6, 3)
    assert np.all(rgb[..., 0] > 200) and np.all(rgb[..., 1:] < 60)


def test_16bit_grayscale_is_scaled_to_8_bits(tmp_path):
    values = np.array([[0, 65535, 32896, 257]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    rgb = np.asarray(open_rgb(tmp_path / "d.png"))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 255, 128, 1])


def test_exif_orientation_is_applied(tmp_path):
    pixels = random_rgb(10, 30)  # landscape as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    upright = open_rgb(tmp_path / "r.jpg")
    assert upright.size == (10, 30)  # portrait once rotated (PIL size is (W, H))


def test_box_is_cropped_and_clipped(tmp_path):
    pixels = random_rgb(20, 30)
    path = write_png(tmp_path / "a.png", pixels)
    np.testing.assert_array_equal(np.asarray(open_rgb(path, box=(5, 2, 12, 9))),
                                  pixels[2:9, 5:12])
    np.testing.assert_array_equal(np.asarray(open_rgb(path, box=(25, 15, 99, 99))),
                                  pixels[15:, 25:])
    with pytest.raises(BadImageError, match="empty"):
        open_rgb(path, box=(40, 0, 50, 5))


def test_each_bad_kind_names_file_and_reason(tmp_path):
    for name, word in write_bad_images(tmp_path).items():
        with pytest.raises(BadImageError) as info:
            open_rgb(tmp_path / name)
        assert word in info.value.reason, (name, info.value.reason)
        assert name in str(info.value)
    with pytest.raises(BadImageError, match="no such file"):
        open_rgb(tmp_path / "missing.jpg")


def test_pixel_limit_is_configurable(tmp_path):
    path = write_png(tmp_path / "a.png", random_rgb(20, 30))
    with pytest.raises(BadImageError, match="decompression bomb"):
        open_rgb(path, max_pixels=599)
    assert open_rgb(path, max_pixels=600).size == (30, 20)


def test_draft_decodes_a_jpeg_smaller_but_not_below_the_asked_side(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(random_rgb(400, 600)).save(path, quality=90)
    assert open_rgb(path).size == (600, 400)  # extraction: always the full-size decode
    small = open_rgb(path, draft_size=96)  # training: libjpeg's DCT scaling (1/2, 1/4)
    assert small.mode == "RGB" and min(small.size) >= 96 and small.size[0] < 600
    png = write_png(tmp_path / "a.png", random_rgb(400, 600))
    assert open_rgb(png, draft_size=96).size == (600, 400)  # only JPEGs have a draft mode


def test_one_suffix_list_for_every_folder_scan(tmp_path):
    from vggfeat.data.images import IMAGE_SUFFIXES, is_image_file

    assert {".jpg", ".jpeg", ".png", ".gif"} <= IMAGE_SUFFIXES
    for name in ("a.JPG", "b.gif", ".hidden.jpg", "notes.txt", "RENAME2"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    assert sorted(p.name for p in tmp_path.iterdir() if is_image_file(p)) == ["a.JPG", "b.gif"]
