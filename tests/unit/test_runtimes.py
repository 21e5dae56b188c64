"""ONNX Runtime (fp32, INT8) beside eager PyTorch: the same pre- and post-processing, the same answers; stale and
missing files refused; the exportable time pooling equals PyTorch's adaptive max pooling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from connectors.recording import Replayer
from model.config import InspectorConfig
from model.encoders import time_chunk_max
from model.factory_model import FactoryInspector
from model.predictor import Predictor, batch_inputs
from model.runtimes import INT8_PERCENTILES, ONNX_FILES, quantize_int8
from pipelines.lines.factory.handler import decode

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "tests" / "data" / "models" / "factory-v2"
MINI = ROOT / "tests" / "data" / "recordings" / "factory-mini"


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    decoded = [d for d in (decode(s) for s in Replayer(MINI)) if isinstance(d, dict)]
    return [batch_inputs(decoded[i:i + 8]) for i in range(0, len(decoded), 8)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, batches) -> Path:
    """A copy of the shipped model with its fp32 and INT8 ONNX files (calibrated on factory-mini)."""
    folder = tmp_path_factory.mktemp("model") / "factory"
    shutil.copytree(SHIPPED, folder)
    for name in ONNX_FILES.values():
        (folder / name).unlink(missing_ok=True)
    eager = Predictor.from_pretrained(folder)
    eager.export(folder, "onnx")
    eager.export(folder, "int8", batches)
    return folder


def test_onnx_answers_as_eager_does(exported: Path, batches) -> None:
    eager = Predictor.from_pretrained(exported)
    onnx = Predictor.from_pretrained(exported, runtime="onnx")
    for batch in batches:
        a, b = eager.forward_batch(batch), onnx.forward_batch(batch)
        for task in a.probs:
            assert np.abs(a.probs[task] - b.probs[task]).max() <= 1e-4
        assert np.abs(a.modality_weights - b.modality_weights).max() <= 1e-4
        assert a.boxes == b.boxes
        assert [(p.label, p.reject, p.extra["machine"]) for p in eager.predictions(a)] == \
               [(p.label, p.reject, p.extra["machine"]) for p in onnx.predictions(b)]
    assert onnx.predict(batches[0])[0].model_version == eager.version + "+onnx"


def test_onnx_fills_a_modality_the_batch_lacks(exported: Path, batches) -> None:
    """Frames only: the graph gets zero audio rows masked by ``present``, as eager leaves the audio out."""
    frames_only = {"image": batches[0]["image"]}
    eager = Predictor.from_pretrained(exported).forward_batch(frames_only)
    onnx = Predictor.from_pretrained(exported, runtime="onnx").forward_batch(frames_only)
    assert np.abs(eager.probs["defect"] - onnx.probs["defect"]).max() <= 1e-4
    assert not onnx.present[:, 1].any() and np.all(onnx.modality_weights[:, 1] == 0)


def test_int8_is_smaller_and_mostly_agrees(exported: Path, batches) -> None:
    assert (exported / ONNX_FILES["int8"]).stat().st_size < 0.75 * (exported / ONNX_FILES["onnx"]).stat().st_size
    eager = Predictor.from_pretrained(exported)
    int8 = Predictor.from_pretrained(exported, runtime="int8")
    same = [a.label == b.label for batch in batches
            for a, b in zip(eager.predict(batch), int8.predict(batch), strict=True)]
    assert np.mean(same) >= 0.8, f"INT8 agrees with eager on {np.mean(same):.0%} of factory-mini"


def test_int8_keeps_the_audio_encoder_fp32_and_records_its_choices(exported: Path) -> None:
    """The audio encoder's convolutions read fp32 weights (no DequantizeLinear before them), the image encoder's
    int8 ones; the chosen calibration percentile is one of those tried."""
    model = onnx.load(str(exported / ONNX_FILES["int8"]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert float(meta["int8_percentile"]) in INT8_PERCENTILES
    assert meta["int8_fp32_modules"] == "model.audio_encoder"
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    audio = [node.name for node in onnx.load(str(exported / ONNX_FILES["onnx"])).graph.node
             if node.op_type == "Conv" and "model.audio_encoder" in str(node.metadata_props)]
    convs = {node.name: node.input[1] in dequantized for node in model.graph.node if node.op_type == "Conv"}
    assert audio and not any(convs[name] for name in audio), "an audio encoder convolution was quantised"
    assert sum(convs.values()) >= len(convs) - len(audio), "the image encoder's convolutions stay int8"


def test_int8_refuses_modules_the_graph_lacks(exported: Path, batches, tmp_path: Path) -> None:
    eager = Predictor.from_pretrained(exported)
    feeds = [eager.graph_inputs(eager._inputs_tensors(batches[0]))]
    with pytest.raises(ValueError, match="no node exported from model.lidar_encoder"):
        quantize_int8(exported / ONNX_FILES["onnx"], tmp_path / "x.onnx", feeds, fp32_modules=("model.lidar_encoder",))


def test_a_missing_onnx_file_says_how_to_export_it(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "m")
    for name in ONNX_FILES.values():
        (tmp_path / "m" / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="fusionline export LINE .* --runtime int8"):
        Predictor.from_pretrained(tmp_path / "m", runtime="int8")
    with pytest.raises(ValueError, match="runtime 'tensorrt'"):
        Predictor.from_pretrained(tmp_path / "m", runtime="tensorrt")


def test_an_onnx_file_from_other_weights_is_refused(exported: Path, tmp_path: Path) -> None:
    """Retrained in place: new weights with their own SHA-256, the ONNX files still those of the old ones."""
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    config = InspectorConfig.from_dict(json.loads((stale / "config.json").read_text()))
    FactoryInspector(config).save_pretrained(stale)
    with pytest.raises(ValueError, match="exported from other weights"):
        Predictor.from_pretrained(stale, runtime="onnx")


def test_the_medical_line_runs_eager_only() -> None:
    from pipelines.lines import handler_class, shipped_model

    with pytest.raises(ValueError, match="eager only"):
        handler_class("medical").from_pretrained(shipped_model("medical"), runtime="onnx")


@pytest.mark.parametrize("steps", [1, 3, 4, 5, 13, 101])
@pytest.mark.parametrize("chunks", [1, 2, 4, 7])
def test_time_chunk_max_is_adaptive_max_pooling(steps: int, chunks: int) -> None:
    frames = torch.randn(2, steps, 5)
    expected = F.adaptive_max_pool1d(frames.transpose(1, 2), chunks).transpose(1, 2)
    assert torch.equal(time_chunk_max(frames, chunks), expected)


def test_bf16_runs_eager_under_bf16_autocast(batches) -> None:
    """The bf16 runtime is the eager network under bf16 autocast (on CPU too): its probabilities move off fp32's
    by bf16's rounding, not more, and its decisions carry the runtime in the model version."""
    eager = Predictor.from_pretrained(SHIPPED)
    bf16 = Predictor.from_pretrained(SHIPPED, runtime="bf16")
    gaps = []
    for batch in batches:
        a, b = eager.forward_batch(batch), bf16.forward_batch(batch)
        gaps += [float(np.abs(a.probs[task] - b.probs[task]).max()) for task in a.probs]
    assert 0 < max(gaps) <= 0.1, f"bf16 probabilities differ from fp32 by up to {max(gaps):.3g}"
    assert bf16.predict(batches[0])[0].model_version == eager.version + "+bf16"
