#!/usr/bin/python3
"""Test oracle for image preprocessing: real photos and torchvision's evaluation transform of them.

Test-only (needs Debian's python3-torchvision, python3-pil, python3-skimage, python3-sklearn).
Called by convnext_reference.py's generate step; can also run alone:

    /usr/bin/python3 tests/python/preprocess_reference.py --out build/testdata/preprocess

copies each photo (PHOTO.png / PHOTO.jpg, bytes unchanged), derives a few images in other pixel
formats from them (SYNTHETIC below), and writes, for every case below, CASE.npy: the [1, 3, H, W]
float32 tensor that ConvNeXt's official evaluation transform gives, on PIL images
(Image.open(path).convert("RGB")) exactly as its datasets.py builds it:

    size < 384:  Resize(int(size / crop_pct), interp), CenterCrop(size), ToTensor, Normalize
    size >= 384: Resize((size, size), interp), ToTensor, Normalize

model/preprocess_test.cc compares its own DecodeAndTransform of the same bytes with these.
"""
import argparse
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

SKIMAGE_DATA = "/usr/lib/python3/dist-packages/skimage/data"
SKLEARN_IMAGES = "/usr/lib/python3/dist-packages/sklearn/datasets/images"

PHOTOS = {
    "chelsea.png": SKIMAGE_DATA,     # 451 x 300 RGB
    "coffee.png": SKIMAGE_DATA,      # 600 x 400 RGB
    "astronaut.png": SKIMAGE_DATA,   # 512 x 512 RGB
    "china.jpg": SKLEARN_IMAGES,     # 640 x 427 baseline JPEG
    "flower.jpg": SKLEARN_IMAGES,    # 640 x 427 baseline JPEG
}

INTERPOLATIONS = {
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "nearest": transforms.InterpolationMode.NEAREST,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images in other pixel formats, derived from the photos: name -> what it tests.
SYNTHETIC = {
    "gray.png": "8-bit grayscale, replicated to RGB",
    "rgba.png": "RGBA with a varying alpha, which convert('RGB') drops without compositing",
    "rgb16.png": "16-bit RGB; PIL keeps the high byte of each sample",
    "gray16.png": "16-bit grayscale; the reference takes the high byte (PIL itself clips to 255)",
    "exif_rotated.jpg": "48 x 32 pixels stored, EXIF orientation 6: displays as 32 x 48",
}

# case name -> (image, size, crop_pct, interpolation). Keep in sync with preprocess_test.cc.
CASES = {
    "chelsea_224": ("chelsea.png", 224, 0.875, "bicubic"),
    "coffee_224": ("coffee.png", 224, 0.875, "bicubic"),
    "astronaut_224": ("astronaut.png", 224, 0.875, "bicubic"),
    "china_224": ("china.jpg", 224, 0.875, "bicubic"),
    "flower_224": ("flower.jpg", 224, 0.875, "bicubic"),
    # Squash to 384 x 384: the width shrinks (antialiased), the height grows.
    "chelsea_384": ("chelsea.png", 384, 0.875, "bicubic"),
    # Squash to 400 x 400: the height is unchanged, so PIL skips the vertical pass.
    "coffee_400": ("coffee.png", 400, 0.875, "bicubic"),
    "china_bilinear_224": ("china.jpg", 224, 0.875, "bilinear"),
    "flower_nearest_224": ("flower.jpg", 224, 0.875, "nearest"),
    # A crop_pct whose resize target is not a round number: int(288 / 0.95) = 303.
    "astronaut_288": ("astronaut.png", 288, 0.95, "bicubic"),
    "gray_224": ("gray.png", 224, 0.875, "bicubic"),
    "rgba_224": ("rgba.png", 224, 0.875, "bicubic"),
    "rgb16_224": ("rgb16.png", 224, 0.875, "bicubic"),
    "gray16_224": ("gray16.png", 224, 0.875, "bicubic"),
}


def write_png16(path, a):
    """A 16-bit PNG of the uint16 array a (H x W gray or H x W x 3 RGB); PIL cannot write RGB16."""
    h, w = a.shape[:2]
    color_type = 0 if a.ndim == 2 else 2
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def write_synthetic(out_dir):
    rng = np.random.default_rng(0)
    coffee = Image.open(os.path.join(out_dir, "coffee.png")).convert("RGB")
    chelsea = np.asarray(Image.open(os.path.join(out_dir, "chelsea.png")).convert("RGB"))
    astronaut = np.asarray(Image.open(os.path.join(out_dir, "astronaut.png")).convert("RGB"))
    coffee.convert("L").save(os.path.join(out_dir, "gray.png"))
    alpha = np.linspace(0, 255, chelsea.shape[1]).astype(np.uint8)
    alpha = np.broadcast_to(alpha, chelsea.shape[:2])[..., None]
    Image.fromarray(np.concatenate([chelsea, alpha], axis=2), "RGBA").save(
        os.path.join(out_dir, "rgba.png"))
    low = lambda shape: rng.integers(0, 256, shape, dtype=np.uint16)
    write_png16(os.path.join(out_dir, "rgb16.png"),
                astronaut.astype(np.uint16) * 256 + low(astronaut.shape))
    gray = np.asarray(coffee.convert("L")).astype(np.uint16)
    write_png16(os.path.join(out_dir, "gray16.png"), gray * 256 + low(gray.shape))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    Image.fromarray(astronaut[:32, :48]).save(os.path.join(out_dir, "exif_rotated.jpg"),
                                               exif=exif.tobytes())


def load_rgb(path):
    with Image.open(path) as im:
        if os.path.basename(path) == "gray16.png":
            return Image.fromarray((np.asarray(im) >> 8).astype(np.uint8), "L").convert("RGB")
        return im.convert("RGB")


def eval_transform(size, crop_pct, interpolation):
    interp = INTERPOLATIONS[interpolation]
    if size >= 384:
        steps = [transforms.Resize((size, size), interpolation=interp)]
    else:
        steps = [transforms.Resize(int(size / crop_pct), interpolation=interp),
                 transforms.CenterCrop(size)]
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(steps)


def generate(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for photo, src_dir in PHOTOS.items():
        shutil.copyfile(os.path.join(src_dir, photo), os.path.join(out_dir, photo))
    write_synthetic(out_dir)
    for case, (image, size, crop_pct, interpolation) in CASES.items():
        rgb = load_rgb(os.path.join(out_dir, image))
        x = eval_transform(size, crop_pct, interpolation)(rgb).unsqueeze(0)
        np.save(os.path.join(out_dir, f"{case}.npy"), x.numpy().astype(np.float32))
    print(f"preprocess_reference: {len(CASES)} cases in {out_dir}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
