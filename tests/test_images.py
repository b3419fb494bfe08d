"""Each real-world image trap, built on the fly, with its exact outcome."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from plankton_transfer.data.images import ImageParams, check_image, load_rgb
from tests.conftest import png_header_only

CFG = ImageParams()


def save(img: Image.Image, path, fmt: str, **kw):
    img.save(path, fmt, **kw)
    return path


def test_plain_rgb_jpeg_is_usable_without_conversion(tmp_path):
    path = save(Image.new("RGB", (30, 20), (10, 20, 30)), tmp_path / "a.jpg", "JPEG")
    check = check_image(path, CFG)
    assert check.ok and check.conversions == () and (check.width, check.height) == (30, 20)
    assert len(check.sha256) == 64


def test_greyscale_becomes_three_equal_channels(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    path = save(Image.fromarray(grey), tmp_path / "g.png", "PNG")
    rgb = np.asarray(load_rgb(path, CFG))
    assert rgb.shape == (8, 25, 3)
    assert (rgb[..., 0] == grey).all() and (rgb[..., 1] == grey).all() and (rgb[..., 2] == grey).all()


@pytest.mark.parametrize("mode,fmt,dtype", [("I;16", "PNG", "<u2"), ("I;16B", "TIFF", ">u2"),
                                             ("I", "TIFF", "<i4"), ("F", "TIFF", "<f4")])
def test_high_bit_depth_greyscale_is_stretched_not_clipped(tmp_path, mode, fmt, dtype):
    # 12-bit camera data in a 16-bit container: 0..4095
    values = np.linspace(0, 4095, 64 * 16).reshape(16, 64).astype(dtype)
    img = Image.fromarray(values.astype(np.uint16)) if mode == "I;16" else Image.fromarray(values)
    if mode == "I;16B":
        img = Image.fromarray(values.astype(">u2"))
    path = save(img, tmp_path / f"deep.{fmt.lower()}", fmt)
    assert Image.open(path).convert("RGB").getextrema()[0][0] >= 0  # Pillow opens it
    naive = np.asarray(Image.open(path).convert("L"))
    assert (naive >= 254).mean() > 0.9  # the trap: Pillow's conversion clips almost all to white
    check = check_image(path, CFG)
    assert check.ok and any("stretched" in c for c in check.conversions)
    out = np.asarray(load_rgb(path, CFG))[..., 0]
    assert out.min() == 0 and out.max() == 255
    expected = np.rint(values.astype(float) / 4095 * 255)  # linear from the image's min..max
    assert np.abs(out - expected).max() <= 1


def test_transparency_is_flattened_onto_the_background_not_black(tmp_path):
    a = np.zeros((10, 10, 4), dtype=np.uint8)
    a[..., 0] = 200  # red where opaque
    a[:5, :, 3] = 255  # top half opaque, bottom half fully transparent
    path = save(Image.fromarray(a, "RGBA"), tmp_path / "alpha.png", "PNG")
    check = check_image(path, ImageParams(background=(255, 255, 255)))
    assert check.ok and any("transparency" in c for c in check.conversions)
    out = np.asarray(load_rgb(path, ImageParams(background=(255, 255, 255))))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[9, 9]) == (255, 255, 255)
    dark = np.asarray(load_rgb(path, ImageParams(background=(0, 0, 0))))
    assert tuple(dark[9, 9]) == (0, 0, 0)


def test_palette_with_transparency_and_la_are_flattened(tmp_path):
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    path = save(p, tmp_path / "p.png", "PNG", transparency=0)
    out = np.asarray(load_rgb(path, CFG))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[5, 5]) == (255, 255, 255)
    la = Image.fromarray(np.dstack([np.full((6, 6), 50, np.uint8), np.zeros((6, 6), np.uint8)]), "LA")
    check = check_image(save(la, tmp_path / "la.png", "PNG"), CFG)
    assert check.ok and any("LA transparency" in c for c in check.conversions)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(img, tmp_path / "rot.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    check = check_image(path, CFG)
    assert check.ok and "EXIF orientation 6 applied" in check.conversions
    out = load_rgb(path, CFG)
    assert out.size == (20, 40)
    assert np.asarray(out)[2, 10].mean() > 200  # the stripe is now at the top


def test_multi_frame_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("L", (12, 12), v).convert("P") for v in (0, 128, 255)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    check = check_image(path, CFG)
    assert check.ok and any("multi-frame (3 frames): first frame used" in c for c in check.conversions)
    assert np.asarray(load_rgb(path, CFG)).max() < 10


def test_multi_page_tiff_uses_the_first_page(tmp_path):
    pages = [Image.new("RGB", (12, 12), (v, v, v)) for v in (30, 220)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert any("2 frames" in c for c in check_image(path, CFG).conversions)
    assert np.asarray(load_rgb(path, CFG)).mean() == pytest.approx(30, abs=1)


def test_truncated_jpeg_passes_verify_but_is_rejected(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.open(path).verify()  # the trap: verify() does not notice
    check = check_image(path, CFG)
    assert not check.ok and check.kind == "truncated or corrupt"


def test_empty_file_and_text_with_image_extension_are_rejected(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image\n")
    assert check_image(tmp_path / "zero.jpg", CFG).kind == "empty file"
    check = check_image(tmp_path / "notes.png", CFG)
    assert not check.ok and check.kind == "not an image"


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))  # 10 gigapixels, 60 bytes on disk
    check = check_image(path, CFG)
    assert not check.ok and check.kind == "too large"
    assert "image.max_pixels" in check.reason


def test_max_pixels_and_min_side_params_are_honoured(tmp_path):
    path = save(Image.new("RGB", (20, 20)), tmp_path / "a.png", "PNG")
    assert check_image(path, ImageParams(max_pixels=399)).kind == "too large"
    assert check_image(path, ImageParams(max_pixels=400)).ok
    thin = save(Image.new("RGB", (200, 2)), tmp_path / "thin.png", "PNG")
    assert check_image(thin, CFG).kind == "too small"


@pytest.mark.parametrize("mode", ["CMYK", "1", "YCbCr"])
def test_other_modes_are_converted_to_rgb(tmp_path, mode):
    img = Image.new("RGB", (16, 16), (250, 10, 10)).convert(mode)
    fmt = "TIFF" if mode != "YCbCr" else "JPEG"
    path = save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    check = check_image(path, CFG)
    assert check.ok
    assert load_rgb(path, CFG).mode == "RGB"
    if mode in ("CMYK", "1"):
        assert f"{mode} converted to RGB" in check.conversions


def test_unreadable_file_is_rejected_not_a_crash(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (8, 8)), tmp_path / "locked.png", "PNG")

    real_open = type(path).open

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(type(path), "open", denied)
    check = check_image(path, CFG)
    assert not check.ok and check.kind == "unreadable file" and "Permission denied" in check.reason
