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

# The same preparation as the per-core peer beside this file (the script's folder is on the path).
from photos_peer import torchvision_crop


def prepare(path):
    return np.asarray(torchvision_crop(path))[:, :, ::-1].transpose(2, 0, 1)  # BGR, CHW, 0..255


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
