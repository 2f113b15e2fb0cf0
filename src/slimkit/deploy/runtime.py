"""The deployment runtimes: which are installed, how to run an artifact in each, and the parity check.

One runner per runtime turns an artifact file into `run(x: np.ndarray) -> list[np.ndarray]` at a
given thread count. The export check, `slimkit profile --runtime`, the deploy latency table and the
int8 top-1 all go through these runners, so every figure comes from the runtime the file ships to.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from slimkit.errors import BadInputError, SlimkitError
from slimkit.utils.registry import Registry

__all__ = ["RUNTIMES", "Runtime", "RuntimeUnavailable", "RuntimeCheck", "ParityError", "get_runtime",
           "parse_runtimes", "runtime_status", "open_runner", "check_parity"]

Runner = Callable[[np.ndarray], list]


@dataclass(frozen=True)
class Runtime:
    name: str  # the --to name
    title: str  # what users call it
    module: str  # the Python module that runs its artifacts
    dist: str  # its pip distribution (for the version)
    extra: str  # pip install slimkit[EXTRA]
    suffix: str  # artifact file suffix


_CATALOGUE = (
    Runtime("onnx", "ONNX Runtime", "onnxruntime", "onnxruntime", "", ".onnx"),
    Runtime("openvino", "OpenVINO Runtime", "openvino", "openvino", "openvino", ".xml"),
    Runtime("tflite", "LiteRT", "ai_edge_litert", "ai-edge-litert", "litert", ".tflite"),
    Runtime("executorch", "ExecuTorch", "executorch.runtime", "executorch", "executorch", ".pte"),
)
RUNTIMES: dict[str, Runtime] = {rt.name: rt for rt in _CATALOGUE}  # in the order `all` exports them
_REGISTRY: Registry = Registry("runtime")
for _rt in _CATALOGUE:
    _REGISTRY.add(_rt.name, _rt)


class RuntimeUnavailable(BadInputError):
    """The runtime a user asked for is not installed here."""


class ParityError(SlimkitError):
    """An artifact's outputs in its runtime differ from the reference beyond the tolerance."""


def get_runtime(name: str) -> Runtime:
    try:
        return _REGISTRY.get(str(name).strip())
    except BadInputError as exc:
        raise BadInputError(f"{exc} (or all)") from None


def parse_runtimes(text: str | Sequence[str]) -> list[str]:
    """'onnx,openvino' or ['onnx', 'openvino'] -> validated names; 'all' -> every runtime."""
    items = [s.strip().lower() for s in (text.split(",") if isinstance(text, str) else text) if str(s).strip()]
    if not items:
        raise BadInputError("no runtime given; choose from " + ", ".join(RUNTIMES) + " (or all)")
    if "all" in items:
        return list(RUNTIMES)
    return list(dict.fromkeys(get_runtime(s).name for s in items))


def runtime_status(name: str) -> tuple[str | None, str | None]:
    """(version, None) when the runtime is installed, else (None, why not)."""
    rt = get_runtime(name)
    try:
        found = importlib.util.find_spec(rt.module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        hint = f"pip install 'slimkit[{rt.extra}]'" if rt.extra else "pip install onnxruntime"
        return None, f"{rt.title} is not installed ({rt.module} not importable; {hint})"
    try:
        return importlib.metadata.version(rt.dist), None
    except importlib.metadata.PackageNotFoundError:
        return "unknown", None


def require_runtime(name: str) -> str:
    version, why = runtime_status(name)
    if version is None:
        raise RuntimeUnavailable(f"{name}: {why}")
    return version


def open_runner(runtime: str, path: str | Path, threads: int = 1) -> Runner:
    """A callable running the artifact at `path` in its own runtime with `threads` threads."""
    require_runtime(runtime)
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{runtime}: artifact {path} does not exist")
    try:
        return _OPENERS[get_runtime(runtime).name](path, max(1, int(threads)))
    except SlimkitError:
        raise
    except Exception as exc:  # a corrupt or foreign file: each runtime raises its own error types
        raise BadInputError(f"{runtime}: cannot load {path.name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _onnx_runner(path: Path, threads: int) -> Runner:
    from slimkit.deploy.onnx_export import ort_session

    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})


def _openvino_runner(path: Path, threads: int) -> Runner:
    import openvino as ov

    # f32 explicitly: on CPUs with bf16 units (AVX-512 BF16, AMX) OpenVINO's default inference
    # precision is bf16, which would not be the fp32 model that was checked.
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(x: np.ndarray) -> list:
        result = request.infer([np.ascontiguousarray(x, dtype=np.float32)])
        return [np.asarray(result[o]) for o in outputs]

    return run


def _tflite_runner(path: Path, threads: int) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outs = interp.get_output_details()

    def run(x: np.ndarray) -> list:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(inp["shape"]) != x.shape:
            raise BadInputError(f"tflite: the artifact takes input {list(inp['shape'])}, got {list(x.shape)}")
        interp.set_tensor(inp["index"], _quantize_input(x, inp))
        interp.invoke()
        return [_dequantize_output(interp.get_tensor(o["index"]), o) for o in outs]

    return run


def _quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Full-integer LiteRT models take int8 input: q = round(x / scale) + zero_point."""
    if detail["dtype"] == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.array(y)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


class _TorchaoEnumNotice(logging.Filter):
    """torchao (imported by ExecuTorch) logs a deprecation notice through torch's pytree logger on import;
    it would land on stderr above the CLI's one-line messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


def quiet_torchao_import() -> None:
    log = logging.getLogger("torch.utils._pytree")
    if not any(isinstance(f, _TorchaoEnumNotice) for f in log.filters):
        log.addFilter(_TorchaoEnumNotice())


def _executorch_runner(path: Path, threads: int) -> Runner:
    import torch

    quiet_torchao_import()
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime as EtRuntime

    # ExecuTorch's XNNPACK threadpool is process-wide: the last runner opened sets it.
    portable_lib._unsafe_reset_threadpool(threads)
    method = EtRuntime.get().load_program(str(path)).load_method("forward")

    def run(x: np.ndarray) -> list:
        out = method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        return [o.detach().numpy() for o in out]

    return run


_OPENERS = {"onnx": _onnx_runner, "openvino": _openvino_runner, "tflite": _tflite_runner,
            "executorch": _executorch_runner}


@dataclass
class RuntimeCheck:
    """One artifact run in its runtime against a reference on the same inputs."""

    runtime: str
    runtime_version: str
    reference: str  # "pytorch" | "fake-quant (...)"
    passed: bool
    max_abs_diff: float
    tolerance: float  # atol * max(1, output_scale)
    output_scale: float  # max |reference output|
    atol: float
    batch_sizes: list[int]
    images: int  # inputs compared (one call per batch size, consecutive rows)
    top1_agreement: float | None  # fraction of rows whose argmax matches the reference's
    inputs: str  # "given" (real images) | "random N(0, 1)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(runner: Runner, reference: Callable[[np.ndarray], list], inputs: np.ndarray, *, runtime: str,
                 reference_name: str = "pytorch", atol: float = 1e-4, batch_sizes: Sequence[int] = (1,),
                 calls: int = 4, inputs_kind: str = "given", raise_on_fail: bool = True) -> RuntimeCheck:
    """Compare `runner` with `reference` on `calls` slices of `inputs` at each batch size."""
    worst, scale, agree, rows, start, images = 0.0, 0.0, 0, 0, 0, 0
    for batch in batch_sizes:
        for _ in range(calls):
            x = inputs[start % len(inputs):][:batch]
            if len(x) < batch:
                x = inputs[:batch]
            start, images = start + batch, images + len(x)
            ref, got = [np.asarray(r, dtype=np.float64) for r in reference(x)], runner(x)
            if len(got) != len(ref) or any(np.shape(g) != r.shape for g, r in zip(got, ref)):
                raise ParityError(f"{runtime} check failed: outputs {[np.shape(g) for g in got]} != "
                                  f"reference outputs {[r.shape for r in ref]} at batch {batch}")
            worst = max([worst] + [float(np.max(np.abs(np.asarray(g, np.float64) - r))) for g, r in zip(got, ref) if r.size])
            scale = max([scale] + [float(np.max(np.abs(r))) for r in ref if r.size])
            if ref and ref[0].ndim == 2:
                agree += int((np.asarray(got[0]).argmax(1) == ref[0].argmax(1)).sum())
                rows += len(ref[0])
    tolerance = atol * max(1.0, scale)
    passed = bool(np.isfinite(worst) and worst <= tolerance)
    version = runtime_status(runtime)[0] or "?"
    check = RuntimeCheck(runtime, version, reference_name, passed, worst, tolerance, scale, atol, list(batch_sizes),
                         images, agree / rows if rows else None, inputs_kind)
    if not passed and raise_on_fail:
        raise ParityError(f"{runtime} check failed: max |{reference_name} - {get_runtime(runtime).title}| = "
                          f"{worst:.3g} > tolerance {tolerance:.3g} ({check.images} images at batch "
                          f"{list(batch_sizes)})")
    return check
