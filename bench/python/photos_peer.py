"""The Python peer of the bench's real-photo rows: each photo decoded by Pillow from bytes in
memory and prepared as torchvision prepares an ImageNet input (EXIF orientation applied, RGB,
shorter side to 256 with Pillow's bilinear, centre 224x224 crop, /255, ImageNet mean and std,
CHW float32), one process, one thread.

    python photos_peer.py FOLDER

Prints one JSON line: images, seconds (the loop alone, the files already read, as the bench's
own decoding rows time it) and decode_seconds (a loop that only decodes each file, as the bench's
decode-alone row does).
"""

import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image, ImageOps

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
Image.MAX_IMAGE_PIXELS = None


def torchvision_crop(source):
    """The 224x224 RGB crop torchvision makes of the image in `source` (a path or a file
    object): upright, RGB, shorter side to 256 with Pillow's bilinear, centre crop."""
    with Image.open(source) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(256 * long / short)
    size = (256, new_long) if width <= height else (new_long, 256)
    image = image.resize(size, Image.BILINEAR)
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    return image.crop((left, top, left + 224, top + 224))


def prepare(data):
    values = np.asarray(torchvision_crop(io.BytesIO(data)), dtype=np.float32) / 255.0
    return ((values - MEAN) / STD).transpose(2, 0, 1)


def decode(data):
    """The file's pixels as its decoder gives them (RGB or gray), nothing else."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def timed(step, blobs):
    started = time.perf_counter()
    for data in blobs:
        step(data)
    return time.perf_counter() - started


def main():
    folder = sys.argv[1]
    blobs = [open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))]
    decode_seconds = timed(decode, blobs)
    seconds = timed(prepare, blobs)
    print(json.dumps({"images": len(blobs), "seconds": seconds, "decode_seconds": decode_seconds}))


if __name__ == "__main__":
    main()
