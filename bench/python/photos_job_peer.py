"""The Python peer of the bench's real-photo job row: Pillow + NumPy + ONNX Runtime scoring a
folder of photos with an ImageNet model, one process per core, each image prepared as
torchvision prepares it (EXIF orientation, RGB, shorter side to 256 with Pillow's bilinear,
centre 224x224) and fed in the model's own recipe: BGR, raw 0..255, in the model's input
element type (float16 for the fixture's SqueezeNet), one image per call when the model's batch
is fixed at 1.

    python photos_job_peer.py FOLDER MODEL.onnx [--processes N]

Prints one JSON line: images. The bench times the whole process, as it times the job.
"""

import argparse
import json
import multiprocessing as mp
import os

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None


def prepare(path):
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(256 * long / short)
    size = (256, new_long) if width <= height else (new_long, 256)
    image = image.resize(size, Image.BILINEAR)
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    image = image.crop((left, top, left + 224, top + 224))
    return np.asarray(image)[:, :, ::-1].transpose(2, 0, 1)  # BGR, CHW, 0..255


def score_shard(task):
    files, model = task
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one process per core
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    for path in files:
        session.run(None, {feed.name: prepare(path)[None].astype(dtype)})
    return len(files)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("model")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    args = parser.parse_args()
    files = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder))
    n = args.processes
    with mp.Pool(n) as pool:
        scored = sum(pool.map(score_shard, [(files[i::n], args.model) for i in range(n)]))
    print(json.dumps({"images": scored}))


if __name__ == "__main__":
    main()
