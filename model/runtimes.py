"""What runs a model's tensor graph: eager PyTorch (fp32, or under bf16 autocast), ONNX Runtime in fp32, or ONNX
Runtime in INT8.

A model exports one graph with every input a positional tensor (``torch.onnx.export``, dynamo exporter, batch
dimension dynamic) into its own folder beside ``model.safetensors``; INT8 is static QDQ quantisation by ONNX
Runtime (weights per channel, activations calibrated on real inputs). Each ONNX file carries the SHA-256 of the
weights it was exported from, so a file left over from other weights is refused. Pre- and post-processing stay
with the model's predictor: every runtime sees the same tensors and returns the same arrays.

Example:
    >>> export_onnx(graph, example, "runs/model/model.onnx", output_names, weights_sha256=sha)
    >>> quantize_int8("runs/model/model.onnx", "runs/model/model.int8.onnx", calibration_feeds)
    >>> session = OnnxSession.load("runs/model", "int8", weights_sha256=sha)
    >>> session({"image": ..., "audio": ..., "text": ..., "present": ...})["defect"].shape
    (16, 5)
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a graph is exported: the command line reads RUNTIMES without it
    from torch import Tensor, nn

#: The runtimes a replica may use, and the ONNX file each reads from the model folder (``eager`` and ``bf16``, eager
#: PyTorch under bf16 autocast, read none).
RUNTIMES: tuple[str, ...] = ("eager", "bf16", "onnx", "int8")
ONNX_FILES: dict[str, str] = {"onnx": "model.onnx", "int8": "model.int8.onnx"}
_SHA_KEY = "weights_sha256"
#: CPU flags (``/proc/cpuinfo``) of the instructions that run bf16 natively; without them bf16 is emulated and slower.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` lists them (empty where it is missing)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware (:data:`BF16_CPU_FLAGS`)."""
    return not cpu_flags().isdisjoint(BF16_CPU_FLAGS)


def export_onnx(graph: nn.Module, example: Mapping[str, Tensor], path: str | Path, output_names: Sequence[str],
                weights_sha256: str) -> Path:
    """Export ``graph`` (called with the ``example`` tensors as positional arguments, in their order) to ``path``.

    Every input's first dimension is the batch and stays dynamic; the weights are stored inside the file (no
    external data) and ``weights_sha256`` goes into its metadata.
    """
    import onnx
    import torch

    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            graph.eval(), tuple(example.values()), dynamo=True, external_data=False, optimize=True,
            input_names=list(example), output_names=list(output_names),
            dynamic_shapes={name: {0: batch} for name in example},
        )
    model = program.model_proto
    onnx.helper.set_model_props(model, {_SHA_KEY: weights_sha256})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


#: The operators INT8 quantises: the convolutional encoders and the linear layers. Attention (MatMul, Softmax,
#: LayerNorm) stays fp32: quantising it too cost the shipped factory model 23 points of held-out defect accuracy
#: (69.7 % vs 92.2 %), these cost under one.
INT8_OPS: tuple[str, ...] = ("Conv", "Gemm", "Relu", "Add", "AveragePool", "Concat")
#: Histogram percentiles tried for the activation ranges. Models differ: on validation parts the CNN keeps its
#: accuracy at 99.999 and loses most of it at 99.9, where the pretrained EfficientNet-Lite0 model loses least.
INT8_PERCENTILES: tuple[float, ...] = (99.999, 99.99, 99.9)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: Iterable[Mapping[str, np.ndarray]],
                  op_types: Sequence[str] = INT8_OPS, percentiles: Sequence[float] = INT8_PERCENTILES,
                  fp32_modules: Sequence[str] = ()) -> Path:
    """Static INT8 quantisation (QDQ; weights int8 per channel, activations uint8) of the ``op_types`` operators
    of an :func:`export_onnx` file, its activation ranges calibrated on ``calibration`` batches (feeds by input
    name) at a percentile of each activation's histogram rather than its extremes (min-max ranges cost the
    EfficientNet-Lite0 model 8.5 points of held-out defect accuracy).

    Each of ``percentiles`` is tried and the one whose outputs on the calibration batches come closest to the fp32
    graph's (mean signal-to-quantisation-noise ratio over the outputs, in dB; no labels needed) is kept. It goes
    into the file's metadata (``int8_percentile``) with the weights' SHA-256. Nodes exported from
    ``fp32_modules`` (dotted module paths in the exported graph, e.g. ``model.audio_encoder``) stay fp32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = [dict(f) for f in calibration]
    if not feeds:
        raise ValueError("quantize_int8: calibration needs at least one batch")

    def quantize(path: Path, percentile: float) -> Path:
        quantize_static(str(prepared), str(path), _reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types), nodes_to_exclude=fp32_nodes,
                        calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": percentile})
        return path

    out_path = Path(out_path)
    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    sha = _metadata(fp32).get(_SHA_KEY, "")
    fp32_nodes = [node.name for node in fp32.graph.node if set(_name_scopes(node)) & set(fp32_modules)]
    if fp32_modules and not fp32_nodes:
        raise ValueError(f"{fp32_path}: no node exported from {', '.join(fp32_modules)} (module paths are recorded by "
                         "the dynamo exporter: export the fp32 graph again)")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        reference = _outputs(prepared, feeds)
        fidelity = {p: _sqnr_db(reference, _outputs(quantize(Path(tmp) / f"{p}.onnx", p), feeds)) for p in percentiles}
        best = max(percentiles, key=fidelity.__getitem__)
        model = onnx.load(str(Path(tmp) / f"{best}.onnx"))
    onnx.helper.set_model_props(model, {_SHA_KEY: sha, "int8_percentile": str(best),
                                        "int8_fp32_modules": ",".join(fp32_modules)})
    onnx.save(model, str(out_path))
    return out_path


def _name_scopes(node: object) -> list[str]:
    """The module paths the dynamo exporter recorded for ``node`` (``['', 'model', 'model.audio_encoder', ...]``)."""
    scopes = _metadata(node).get("pkg.torch.onnx.name_scopes")
    return ast.literal_eval(scopes) if scopes else []


def _reader(batches: Sequence[dict[str, np.ndarray]]):
    """An ONNX Runtime calibration reader over ``batches`` (feeds by input name)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Batches()


def _outputs(path: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of the graph at ``path`` for each batch of ``feeds``."""
    session = OnnxSession(path)
    return [list(session(f).values()) for f in feeds]


def _sqnr_db(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Mean over the graph's outputs of 10·log10(signal power / error power), all batches together."""
    ratios = []
    for j in range(len(reference[0])):
        ref = np.concatenate([r[j].ravel() for r in reference]).astype(np.float64)
        err = ref - np.concatenate([c[j].ravel() for c in candidate]).astype(np.float64)
        ratios.append(10 * np.log10(max(float(ref @ ref), 1e-30) / max(float(err @ err), 1e-30)))
    return float(np.mean(ratios))


class OnnxSession:
    """An ONNX Runtime session on one of a model folder's ONNX files (CPU, or CUDA where ONNX Runtime has it).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (1 in a replica: replicas, not threads, use the cores).
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @classmethod
    def load(cls, model_dir: str | Path, runtime: str, weights_sha256: str, threads: int = 1) -> OnnxSession:
        """The ``runtime`` (``onnx`` or ``int8``) file of ``model_dir``, checked against the folder's weights.

        Raises:
            FileNotFoundError: the folder has no such file (the message says how to export it).
            ValueError: an unknown runtime, or a file exported from other weights.
        """
        if runtime not in ONNX_FILES:
            raise ValueError(f"runtime {runtime!r}: ONNX runtimes are {', '.join(ONNX_FILES)}")
        path = Path(model_dir) / ONNX_FILES[runtime]
        if not path.is_file():
            raise FileNotFoundError(
                f"{model_dir}: no {ONNX_FILES[runtime]} for the {runtime} runtime; write it with "
                f"`fusionline export LINE --model {model_dir} --runtime {runtime}`")
        session = cls(path, threads)
        if session.metadata.get(_SHA_KEY) != weights_sha256:
            raise ValueError(f"{path} was exported from other weights than {model_dir}/model.safetensors: export "
                             "it again")
        return session

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: feeds by input name -> outputs by name."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {missing}")
        outputs = self.session.run(self.output_names, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs, strict=True))


def _metadata(model: object) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}  # type: ignore[attr-defined]
