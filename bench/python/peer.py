"""The Python peer the bench compares the folder job with: PIL + NumPy + ONNX Runtime, one
process per core, each scoring its share of the files in batches.

    python peer.py FOLDER MODEL.onnx MEAN.xml [--processes N] [--batch B]

FOLDER holds <class>/<file> images; class indices are the sorted folder names (CIFAR-10's
order). Preprocessing is the walkthrough's, as the product's spec for the model says: BGR,
minus the mean image (OpenCV XML, HWC), CHW, float32. Prints one JSON line: images, correct.
The bench times the whole process, interpreter start-up included, as it times the job.
"""

import argparse
import json
import multiprocessing as mp
import os
import xml.etree.ElementTree as ET

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_mean(path):
    matrix = ET.parse(path).getroot().find("MeanImg")
    values = np.array(matrix.find("data").text.split(), dtype=np.float32)
    return values.reshape(32, 32, 3)  # HWC, BGR as OpenCV writes it


def score_shard(task):
    files, labels, model, mean_path, batch = task
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one process per core
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    mean = load_mean(mean_path)
    correct = 0
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        tensor = np.empty((len(chunk), 3, 32, 32), dtype=np.float32)
        for i, path in enumerate(chunk):
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
            tensor[i] = (rgb[:, :, ::-1] - mean).transpose(2, 0, 1)
        logits = session.run(None, {name: tensor})[0]
        correct += int((logits.argmax(axis=1) == np.array(labels[start : start + batch])).sum())
    return len(files), correct


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("model")
    parser.add_argument("mean")
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    classes = sorted(os.listdir(args.folder))
    files, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(args.folder, name))):
            files.append(os.path.join(args.folder, name, file))
            labels.append(index)
    n = args.processes
    tasks = [(files[i::n], labels[i::n], args.model, args.mean, args.batch) for i in range(n)]
    with mp.Pool(n) as pool:
        results = pool.map(score_shard, tasks)
    print(json.dumps({"images": sum(r[0] for r in results), "correct": sum(r[1] for r in results)}))


if __name__ == "__main__":
    main()
