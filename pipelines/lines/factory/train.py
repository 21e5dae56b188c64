"""Train the factory model on a labelled recording, in one function: load -> split -> fit -> save -> report.

``fit`` runs in this process, or on Ray Train workers (``ray_train``: data-parallel, checkpointed, resumable;
:mod:`pipelines.distributed`); the outputs are the same.

Example:
    >>> model_dir = train_factory("data/train", "runs/model", epochs=10, batch_size=32, seed=0)
    >>> sorted(p.name for p in model_dir.iterdir())
    ['config.json', 'metrics.json', 'model.safetensors', 'training_curves.png']
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model.config import AUDIO_NORMS, InspectorConfig
from model.factory_model import FactoryInspector
from model.train import TensorData, TrainConfig, evaluate_tensors, fit
from pipelines.distributed import RayTrain, fit_data_parallel
from pipelines.lines.factory.datasets import load_recording, recording_classes

log = logging.getLogger("fusionline.train")


def train_factory(
    train_dir: str | Path,
    out_dir: str | Path,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    config: InspectorConfig | None = None,
    train_config: TrainConfig | None = None,
    workers: int = 2,
    progress: bool = True,
    threads: int = 2,
    init_from: str | Path | None = None,
    ray_train: RayTrain | None = None,
    image_size: tuple[int, int] | None = None,
    audio_norm: str | None = None,
) -> Path:
    """Train a :class:`~model.factory_model.FactoryInspector` on ``train_dir`` and save it to ``out_dir``.

    Args:
        train_dir: a labelled recording (``labels.jsonl`` with ``defect``, ``machine`` and optional boxes).
        out_dir: where ``model.safetensors``, ``config.json``, ``metrics.json`` and ``training_curves.png`` go.
        epochs / batch_size: the training schedule (None: the recipe's, :class:`model.train.TrainConfig`).
        seed: fixes the split, the initialisation and the augmentation.
        val_fraction: share of the items held out (stratified by defect class) for per-epoch validation.
        config: model configuration; default :class:`InspectorConfig` with the recording's classes.
        train_config: further hyper-parameters (its seed, threads and progress are overridden by the arguments,
            and its epochs and batch size by those given).
        workers: decoding processes for the recording.
        threads: torch threads for training.
        init_from: a saved model to start from (continued training or fine-tuning; its configuration is used
            and ``config`` is ignored); None trains from scratch.
        ray_train: train on Ray Train workers (checkpoints in ``out_dir/checkpoints``; its ``threads`` replace
            ``threads`` there); None trains in this process. A run its ``stop_after`` stopped still writes the
            outputs (the model as it stands, batch norms not re-estimated; ``epochs_done`` in metrics.json).
        image_size: ``(h, w)`` frames are resized to, replacing the configuration's (also ``init_from``'s: the
            image encoder is convolutional and pools to a fixed grid, so a saved model can be fine-tuned at
            another size, as the cascade's small model is); None keeps it.
        audio_norm: the audio encoder's input normalisation (``InspectorConfig.audio_norm``), replacing the
            configuration's (also ``init_from``'s: the saved audio encoder is fine-tuned with it); None keeps it.

    Returns:
        ``out_dir``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    base = FactoryInspector.from_pretrained(init_from) if init_from is not None else None
    config = base.config if base is not None else (config or InspectorConfig())
    if image_size is not None:
        config.image_size = tuple(image_size)
    if audio_norm is not None:
        if audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm {audio_norm!r} is not one of {AUDIO_NORMS}")
        config.audio_norm = audio_norm
        if base is not None:
            base.audio_encoder.norm = audio_norm
    declared = recording_classes(train_dir)
    if declared and all(task in declared for task in config.classes):
        config.classes = {task: list(declared[task]) for task in config.classes}
    torch.set_num_threads(threads)

    rec = load_recording(train_dir, config, workers=workers, progress=progress)
    for problem in rec.problems[:20]:
        log.warning("%s: %s", problem["item_id"], problem["reason"])
    loaded = time.perf_counter()
    train, val = split(rec.data, val_fraction, seed)

    torch.manual_seed(seed)
    model = base if base is not None else FactoryInspector(config)
    cfg = train_config or TrainConfig()
    cfg.epochs = epochs if epochs is not None else cfg.epochs
    cfg.batch_size = batch_size if batch_size is not None else cfg.batch_size
    cfg.full_frame_epochs = min(cfg.full_frame_epochs, cfg.epochs)
    cfg.seed, cfg.threads, cfg.progress = seed, threads, progress
    if ray_train is None:
        history = fit(model, train, val, cfg)
    else:
        state = fit_data_parallel(fit, model, train, val, cfg, ray_train, out_dir / "checkpoints")
        model.load_state_dict(state["model"])
        history = state["history"]
        if state["epoch"] < cfg.epochs:
            log.warning("stopped after epoch %d of %d; resume continues from %s", state["epoch"], cfg.epochs,
                        out_dir / "checkpoints")
    trained = time.perf_counter()

    model.save_pretrained(out_dir)
    final = history.get("final_val_acc") or (evaluate_tensors(model, val)["acc"] if len(val) else {})
    metrics: dict[str, Any] = {
        "model_version": config.version,
        "train_dir": str(train_dir),
        "items": {"train": len(train), "val": len(val), "problems": len(rec.problems)},
        "epochs_done": history["epoch"][-1] if history["epoch"] else 0,
        "ray_train": asdict(ray_train) if ray_train is not None else None,
        "val_accuracy": final,
        "history": {k: v for k, v in history.items() if k != "parts"},
        "loss_parts": history["parts"],
        "seconds": {"load": loaded - started, "train": trained - loaded, "total": time.perf_counter() - started},
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(history, out_dir / "training_curves.png")
    log.info("trained %s in %.0f s (val %s)", out_dir, metrics["seconds"]["total"], final)
    return out_dir


def split(data: TensorData, val_fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """Stratified (by the first task's label) random split into train and validation subsets."""
    gen = torch.Generator().manual_seed(seed)
    key = next(iter(data.labels.values()))
    val_idx = []
    for cls in torch.unique(key):
        members = torch.nonzero(key == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        val_idx.append(members[: int(round(val_fraction * len(members)))])
    val_mask = torch.zeros(len(data), dtype=torch.bool)
    if val_idx:
        val_mask[torch.cat(val_idx)] = True
    return data.subset(torch.nonzero(~val_mask).flatten()), data.subset(torch.nonzero(val_mask).flatten())


def plot_curves(history: dict[str, Any], path: Path) -> Path:
    """``training_curves.png``: train/val loss and per-task validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["train_loss"], marker="o", label="train")
    if history["val_loss"]:
        ax_loss.plot(epochs, history["val_loss"], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for task, acc in history["val_acc"].items():
        ax_acc.plot(epochs, acc, marker="o", label=task)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1.01))
    if history["val_acc"]:
        ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
