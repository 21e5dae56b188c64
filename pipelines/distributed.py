"""Data-parallel training on Ray Train: one training loop on N workers, on one machine or a cluster.

::

    driver: model, data, val ──ray.put──> TorchTrainer(N workers) ──> latest checkpoint ──> trained state
                                            │  worker r: fit(..., DataParallel(r, N, DDP), resume, on_epoch_end)
                                            │    rows r of every global batch, gradients all-reduced (gloo on CPU,
                                            │    NCCL on GPU), autocast as TrainConfig.precision says
                                            └─ rank 0: a checkpoint after every epoch and a final one

A loop qualifies when it has :func:`model.train.fit`'s hooks: ``fit(model, data, val, cfg, parallel=, resume=,
on_epoch_end=)``, ``cfg`` a dataclass with ``threads`` and ``device``, the state ``on_epoch_end`` gets holding
``epoch``, ``model`` and ``history``. Checkpoints go to ``run_dir`` (``RunConfig(storage_path=run_dir.parent,
name=run_dir.name)``; on a cluster, a folder every node sees); a later run with ``resume`` continues from the
latest (``ray.train.get_checkpoint``), never from step 0. The driver gets the trained model's state back from the
checkpoint, so outputs are written where it runs, whichever node rank 0 ran on.

Example:
    >>> state = fit_data_parallel(fit, model, train, val, cfg, RayTrain(workers=2), Path("runs/m/checkpoints"))
    >>> model.load_state_dict(state["model"]); state["history"]["train_loss"]
    [1.52, 0.97, 0.71]
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.parallel import DataParallel

log = logging.getLogger("fusionline.distributed")

STATE_FILE = "state.pt"


@dataclass
class RayTrain:
    """How to train on Ray Train.

    Attributes:
        workers: training processes (one GPU each where the cluster has GPUs); each takes ``1 / workers`` of every
            global batch.
        address: the Ray cluster to join (``auto``, ``host:port``, ``ray://host:port``); None starts a local one.
        threads: torch CPU threads per worker; None shares the cluster's CPUs out (at least 1 each).
        resume: continue from the latest checkpoint of the run folder (which must hold one).
        stop_after: stop, checkpointed, after this many epochs of this run (``resume`` continues); None: train to
            the end.
    """

    workers: int
    address: str | None = None
    threads: int | None = None
    resume: bool = False
    stop_after: int | None = None


def fit_data_parallel(
    fit: Callable[..., dict[str, Any]],
    model: nn.Module,
    data: Any,
    val: Any,
    cfg: Any,
    run: RayTrain,
    run_dir: Path,
) -> dict[str, Any]:
    """Train ``model`` with ``fit`` on ``run.workers`` Ray Train workers; returns the latest checkpoint's state.

    The state is the final one (``state["epoch"] == cfg.epochs``: the trained model, batch norms re-estimated, and
    the whole history) or, when ``run.stop_after`` stopped the run, the last epoch's.

    Raises:
        ValueError: fewer than one worker, ``run_dir`` holding an earlier run's checkpoints without ``resume``,
            ``resume`` with none there, or more workers and threads than a local Ray has (a cluster's, joined at
            ``run.address``, may grow).
    """
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.runtime import connect_ray

    if run.workers < 1:
        raise ValueError(f"workers must be at least 1, got {run.workers}")
    run_dir = Path(run_dir).resolve()
    earlier = run_dir.is_dir() and any(run_dir.iterdir())
    if earlier and not run.resume:
        raise ValueError(f"{run_dir} holds checkpoints of an earlier run: resume it (--resume) or remove the folder")
    if run.resume and not earlier:
        raise ValueError(f"nothing to resume: no checkpoints in {run_dir}")
    connect_ray(run.address)
    resources = ray.cluster_resources()
    threads = run.threads or max(1, int(resources.get("CPU", 1)) // run.workers)
    use_gpu = resources.get("GPU", 0) > 0
    if run.address is None:  # a local Ray cannot grow: a request it cannot meet would wait for ever
        needed = {"CPU": threads * run.workers, "GPU": run.workers if use_gpu else 0}
        if any(n > resources.get(kind, 0) for kind, n in needed.items()):
            raise ValueError(f"{run.workers} workers x {threads} threads{' + 1 GPU' if use_gpu else ''} need "
                             f"{needed['CPU']} CPUs and {needed['GPU']} GPUs; this machine's Ray has "
                             f"{resources.get('CPU', 0):g} and {resources.get('GPU', 0):g}: ask for fewer workers "
                             "or threads")
    log.info("Ray Train: %d workers x %d threads%s, checkpoints in %s", run.workers, threads,
             " + 1 GPU" if use_gpu else "", run_dir)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"fit": fit, "model": ray.put(model), "data": ray.put(data), "val": ray.put(val),
                           "cfg": replace(cfg, threads=threads), "stop_after": run.stop_after},
        scaling_config=ScalingConfig(num_workers=run.workers, use_gpu=use_gpu, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.parent),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``fit`` as its rank, resumed from the run's latest checkpoint, checkpointing each
    epoch; once done, a final checkpoint with the trained model."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank = context.get_world_rank()
    model, data, val = (ray.get(config[key]) for key in ("model", "data", "val"))
    cfg = replace(config["cfg"], device=str(ray.train.torch.get_device()))
    # some steps leave a branch unused (an image-only batch skips the audio encoder)
    ddp = partial(ray.train.torch.prepare_model, parallel_strategy_kwargs={"find_unused_parameters": True})
    parallel = DataParallel(rank, context.get_world_size(), ddp)
    checkpoint = ray.train.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    last, epochs_run = resume, 0

    def on_epoch_end(state: dict[str, Any]) -> bool:
        nonlocal last, epochs_run
        last, epochs_run = state, epochs_run + 1
        _report(state, rank)
        return config["stop_after"] is not None and epochs_run >= config["stop_after"]

    history = config["fit"](model, data, val, cfg, parallel=parallel, resume=resume, on_epoch_end=on_epoch_end)
    if last["epoch"] == cfg.epochs:
        _report({**last, "model": model.state_dict(), "history": history}, rank)


def _report(state: dict[str, Any], rank: int) -> None:
    """Every worker reports the epoch (a barrier); rank 0 attaches ``state`` as the checkpoint."""
    import ray.train

    history = state["history"]
    metrics = {"epoch": state["epoch"], "train_loss": history["train_loss"][-1]}
    if history["val_loss"]:
        metrics["val_loss"] = history["val_loss"][-1]
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
