"""The arm64 half of check_int8.py, run under run.sh: capture every int8 op ONNX Runtime runs, and the logits.

    run.sh [--cpu ...] arm_capture.py WORK TAG

For each WORK/<model>/ holding model.onnx and x.npy, writes WORK/<model>/<TAG>/: ORT's optimized graph with the
int8 ops' tensors as outputs (capture.onnx), their values (values.npz, by index; names.json), the model's output
(logits.npy) and where it ran (meta.json). Needs numpy, onnx and onnxruntime only.
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimkit.compress.quantize.int8_check import capture_int8_ops
from slimkit.utils.cpu import int8_path


def main() -> None:
    work, tag = Path(sys.argv[1]), sys.argv[2]
    for folder in sorted(p for p in work.iterdir() if (p / "model.onnx").exists()):
        out = folder / tag
        out.mkdir(exist_ok=True)
        x = np.load(folder / "x.npy")
        model, values = capture_int8_ops(folder / "model.onnx", x, out)
        onnx.save(model, str(out / "capture.onnx"))
        names = sorted(values)
        np.savez(out / "values.npz", *[values[n] for n in names])
        (out / "names.json").write_text(json.dumps(names))
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        np.save(out / "logits.npy", sess.run(None, {sess.get_inputs()[0].name: x})[0])
        (out / "meta.json").write_text(json.dumps({"machine": platform.machine(), "int8_path": int8_path(),
                                                   "onnxruntime": ort.__version__}))
        print(f"{folder.name}: {len(names)} tensors captured on {platform.machine()} ({int8_path()})", flush=True)


if __name__ == "__main__":
    main()
