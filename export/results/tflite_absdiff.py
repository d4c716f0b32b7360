"""Raw max absolute differences of the exported MediaPipe models, beside TFLite's own spread.

For each model exported by ``lookserve export tflite`` into REPO (see tflite_exports.txt) and each
photo in PHOTOS (resized to the model's input, scaled to [0, 1]): per output, the max |Δ| of
ONNX (onnxruntime) vs TFLite's built-in kernels (the gate's reference), ONNX vs the XNNPACK
delegate (TFLite's default), and XNNPACK vs built-in (how far TFLite's two CPU implementations
are apart), and the output's largest magnitude.

    python export/results/tflite_absdiff.py /tmp/tflite_repo /tmp/people > export/results/tflite_absdiff.txt
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np

from lookserve.data.pretrained import (
    FACE_DETECTION_SHORT_RANGE,
    PALM_DETECTION_LITE,
    POSE_DETECTION,
    POSE_LANDMARK_FULL,
    mediapipe_model,
)
from lookserve.export.samples import photos_from_dir

MODELS = {"pose_detector": POSE_DETECTION, "pose_landmarks": POSE_LANDMARK_FULL, "face": FACE_DETECTION_SHORT_RANGE,
          "palm": PALM_DETECTION_LITE}


def interpreter(path: Path, builtin: bool):
    import tensorflow as tf

    kind = tf.lite.experimental.OpResolverType
    it = tf.lite.Interpreter(str(path), experimental_op_resolver_type=kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                             if builtin else kind.AUTO)
    it.allocate_tensors()

    def run(x: np.ndarray) -> list[np.ndarray]:
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return [it.get_tensor(d["index"]) for d in it.get_output_details()]

    return run


def main(repo: Path, photo_dir: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore")
    import onnxruntime as ort

    def print(line: str) -> None:  # noqa: A001 - the table goes to stdout
        sys.stdout.write(line + "\n")

    n = len([p for p in photo_dir.iterdir() if p.is_file()])
    print(f"# {n} photos of {photo_dir}, every one; max over them")
    print(f"{'model':15s} {'output':15s} {'max|source|':>12s} {'onnx-builtin':>13s} {'onnx-xnnpack':>13s} {'xnnpack-builtin':>16s}")
    for name, key in MODELS.items():
        path = mediapipe_model(key)
        session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        size = session.get_inputs()[0].shape[1]
        images = photos_from_dir(photo_dir, n, size, size, seed=0).astype(np.float32) / 255.0
        builtin, xnnpack = interpreter(path, True), interpreter(path, False)
        names = [o.name for o in session.get_outputs()]
        stats = {o: np.zeros(4) for o in names}
        for x in images:
            x = x[None]
            b, a, o = builtin(x), xnnpack(x), session.run(None, {session.get_inputs()[0].name: x})
            for k, out in enumerate(names):
                stats[out] = np.maximum(stats[out], [np.abs(b[k]).max(), np.abs(o[k] - b[k]).max(),
                                                     np.abs(o[k] - a[k]).max(), np.abs(a[k] - b[k]).max()])
        for out, (mag, ob, oa, ab) in stats.items():
            print(f"{name:15s} {out:15s} {mag:12.4g} {ob:13.4g} {oa:13.4g} {ab:16.4g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
