"""The Ray Data peer: `read_images` + `map_batches` with an ONNX Runtime actor per core, on a
local Ray cluster started by this process.

    python ray_peer.py FOLDER MODEL.onnx MEAN.xml [--batch B]

Same preprocessing and output as peer.py. Labels come from each file's folder name
(`include_paths=True`).
"""

import argparse
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import onnxruntime as ort
import ray


def load_mean(path):
    matrix = ET.parse(path).getroot().find("MeanImg")
    values = np.array(matrix.find("data").text.split(), dtype=np.float32)
    return values.reshape(32, 32, 3)


class Scorer:
    def __init__(self, model, mean_path, classes):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.mean = load_mean(mean_path)
        self.classes = classes

    def __call__(self, batch):
        images = batch["image"].astype(np.float32)  # N, H, W, RGB
        tensor = np.ascontiguousarray((images[..., ::-1] - self.mean).transpose(0, 3, 1, 2))
        predicted = self.session.run(None, {self.name: tensor})[0].argmax(axis=1)
        labels = np.array([self.classes.index(p.split("/")[-2]) for p in batch["path"]])
        return {"correct": (predicted == labels).astype(np.int64)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("model")
    parser.add_argument("mean")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    cores = os.cpu_count()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    classes = sorted(os.listdir(args.folder))
    # Enough read tasks to keep every core busy, and half a CPU per scoring actor so that
    # reading is never starved of a slot (with a whole CPU each, the actors took every core and
    # the read task waited forever on this 2-core machine).
    dataset = ray.data.read_images(
        args.folder, mode="RGB", include_paths=True, override_num_blocks=4 * cores
    )
    scored = dataset.map_batches(
        Scorer,
        fn_constructor_args=(args.model, args.mean, classes),
        batch_size=args.batch,
        num_cpus=0.5,
        compute=ray.data.ActorPoolStrategy(size=cores),
    )
    correct = images = 0
    for batch in scored.iter_batches(batch_size=None):
        correct += int(batch["correct"].sum())
        images += len(batch["correct"])
    print(json.dumps({"images": images, "correct": correct}))


if __name__ == "__main__":
    main()
