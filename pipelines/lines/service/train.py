"""Train the service line's fault model on a labelled service recording.

The tickets are read the way a replica reads them (:func:`~pipelines.lines.service.handler.decode` ->
:func:`~pipelines.lines.service.handler.hear` -> :func:`~pipelines.lines.service.handler.ticket_tensors`): the
transcripts the model learns from are the recogniser's, errors and all, never the words that were spoken. The photo
encoder is frozen, so those inputs are computed once and cached beside the recording
(``<recording>/.cache-service-<key>.pt``, keyed by the events, the photo preprocessing and the recogniser's
grammar and acoustic model); training then fits the router and heads alone, in seconds to a few minutes on two
cores, with modality dropout so the model also decides from the photo or the words alone.

Example:
    >>> train_service("data/service-train", "runs/service-model", acoustic="runs/service-acoustic")
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from connectors.recording import Replayer, read_labels
from connectors.records import Quarantined
from model.service_config import ServiceConfig
from model.service_model import ServiceFaultModel
from pipelines.lines.service import DEVICES, FAULTS
from pipelines.lines.service.handler import DecodedTicket, TicketTensors, decode, hear, recognizer, ticket_tensors

log = logging.getLogger("fusionline.service.train")

CACHE_VERSION = 1


@dataclass
class TicketSet:
    """The tickets (first messages) of a recording as model inputs, with what the line heard.

    Attributes:
        item_ids: the tickets, in recording order; tensors: their model inputs.
        transcripts / asr_modes: what the recogniser heard (scrubbed) and how.
        quarantined: ``{item_id: reason}`` tickets the line would set aside (not in ``tensors``).
    """

    item_ids: list[str]
    tensors: TicketTensors
    transcripts: list[str]
    asr_modes: list[str]
    quarantined: dict[str, str]

    def targets(self, labels: dict[str, dict[str, Any]], config: ServiceConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fault (N,), device (N,))`` class indices from the recording's labels."""
        fault = [config.faults.index(labels[i]["fault"]) for i in self.item_ids]
        device = [config.devices.index(labels[i]["device"]) for i in self.item_ids]
        return torch.tensor(fault), torch.tensor(device)


def load_tickets(root: str | Path, config: ServiceConfig, acoustic: str | Path | None = None, batch_size: int = 32,
                 cache: bool = True, progress: bool = True) -> TicketSet:
    """Every ticket's first message of the recording ``root`` as the line reads it (follow-ups skipped; the
    recogniser with the adapted ``acoustic`` model, if any), from the cache when it is there."""
    from tqdm import tqdm

    from pipelines.lines.service.knowledge import KnowledgeBase

    root = Path(root)
    knowledge = KnowledgeBase.load()
    listener = recognizer(knowledge, acoustic)
    path = root / f".cache-service-{cache_key(root, config, listener, acoustic)}.pt"
    if cache and path.is_file():
        return TicketSet(**torch.load(path, weights_only=False))
    ids, parts, transcripts, modes, quarantined = [], [], [], [], {}
    pending: list[DecodedTicket] = []

    def flush() -> None:
        hear(pending, listener)
        parts.append(ticket_tensors(pending, config))
        ids.extend(t.item_id for t in pending)
        transcripts.extend(t.transcript for t in pending)
        modes.extend(t.asr_mode for t in pending)
        pending.clear()

    replay = Replayer(root)
    for sample in tqdm(replay, total=len(replay), desc="service tickets", unit="msg", disable=not progress):
        decoded = sample if isinstance(sample, Quarantined) else decode(sample)
        if isinstance(decoded, Quarantined):
            quarantined[decoded.item_id] = decoded.reason
        elif isinstance(decoded, DecodedTicket):
            pending.append(decoded)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    if not parts:
        raise ValueError(f"{root}: no ticket the line can read")
    tickets = TicketSet(ids, TicketTensors.concat(parts), transcripts, modes, quarantined)
    if cache:
        torch.save(tickets.__dict__, path)
    return tickets


def cache_key(root: Path, config: ServiceConfig, listener: Any, acoustic: str | Path | None = None) -> str:
    """What the cached inputs depend on: the events, the photo preprocessing, the recogniser (its code and
    settings, which hold the grammar, keywords and sentences the knowledge base gave it; the adapted acoustic
    model's files) and the speech decoder's code."""
    import connectors.audio
    from pipelines.lines.service import acoustic as adaptation

    h = hashlib.sha256((root / "events.jsonl").read_bytes())
    h.update(json.dumps([CACHE_VERSION, config.photo_size, config.photo_grid, config.photo_encoder,
                         listener.settings()]).encode())
    for module in (sys.modules[type(listener).__module__], connectors.audio):
        h.update(Path(module.__file__).read_bytes())
    for name in adaptation.ADAPTED_FILES if acoustic is not None else ():
        h.update((Path(acoustic) / name).read_bytes())
    return h.hexdigest()[:12]


def drop_modalities(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """``present (B, M)`` with each modality dropped with probability ``p``; a sample that would be left with
    nothing keeps one of its modalities, drawn at random."""
    kept = present & (torch.rand(present.shape, generator=gen) >= p)
    scores = torch.rand(present.shape, generator=gen).masked_fill(~present, -1.0)
    one = F.one_hot(scores.argmax(dim=1), present.shape[1]).bool() & present
    return torch.where(kept.any(dim=1, keepdim=True), kept, one)


@dataclass
class Recipe:
    """How the router and heads are fitted on the cached inputs.

    Attributes:
        epochs / batch_size / lr / weight_decay: AdamW with a one-cycle schedule.
        label_smoothing: of both tasks' cross-entropy; device_weight: the device loss's weight.
        word_noise: standard deviation of Gaussian noise added to the sentence embeddings in training (the
            recogniser's errors on new voices and phrasings move them further than the training set shows).
        resample_uninformative: give a training ticket whose photo hides the fault the photo of another such
            ticket of the same device (and one whose complaint names no fault another such complaint), drawn
            afresh each time: those inputs say nothing about the fault, so the model may not learn them by heart
            (it otherwise memorises them and outvotes the words on new tickets). The labels say which they are.
        val_fraction: share of the tickets held back to pick the best epoch (by fault accuracy).
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.05
    device_weight: float = 0.5
    word_noise: float = 0.0
    resample_uninformative: bool = True
    val_fraction: float = 0.15


def train_service(data: str | Path, out: str | Path, recipe: Recipe | None = None, seed: int = 0, threads: int = 2,
                  acoustic: str | Path | None = None, progress: bool = True) -> Path:
    """Train a fault model on the labelled recording ``data`` and save it to ``out`` (:func:`fit`), hearing the
    voice messages with the adapted ``acoustic`` model (``fusionline fit service``; None: the stock one), which is
    saved with it (``out/acoustic``). Returns ``out``."""
    from pipelines.lines.service.acoustic import ADAPTED_FILES

    torch.set_num_threads(threads)
    recipe = recipe or Recipe()
    config = ServiceConfig(faults=list(FAULTS), devices=list(DEVICES))
    tickets = load_tickets(data, config, acoustic, progress=progress)
    model, history = fit(tickets, read_labels(data), config, recipe, seed, progress)
    out = model.save_pretrained(out, training={"data": str(data), "tickets": len(tickets.item_ids), "seed": seed,
                                               "acoustic": str(acoustic) if acoustic is not None else None,
                                               "recipe": asdict(recipe), "history": history})
    if acoustic is not None:
        (Path(out) / "acoustic").mkdir(exist_ok=True)
        for name in [*ADAPTED_FILES, "adaptation.json"]:
            if (Path(acoustic) / name).is_file():
                shutil.copy(Path(acoustic) / name, Path(out) / "acoustic" / name)
    return Path(out)


def fit(tickets: TicketSet, labels: dict[str, dict[str, Any]], config: ServiceConfig, recipe: Recipe,
        seed: int = 0, progress: bool = False) -> tuple[ServiceFaultModel, list[dict[str, float]]]:
    """Fit a new model's router and heads on ``tickets``; the epoch with the best validation fault accuracy is kept.
    Returns the model (eval mode) and the per-epoch history."""
    torch.manual_seed(seed)
    fault, device = tickets.targets(labels, config)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(fault), generator=gen)
    n_val = max(1, int(round(recipe.val_fraction * len(fault))))
    val, train = order[:n_val], order[n_val:]
    pools = uninformative_pools(tickets, labels, train) if recipe.resample_uninformative else {}
    model = ServiceFaultModel(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * -(-len(train) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.lr, total_steps=steps)
    best, best_state, history = -1.0, None, []
    for epoch in range(recipe.epochs):
        model.train()
        losses = []
        for batch in train[torch.randperm(len(train), generator=gen)].split(recipe.batch_size):
            x = resampled(tickets.tensors, batch, pools, gen)
            present = drop_modalities(x.present, config.modality_dropout, gen)
            words = {m: getattr(x, m) + recipe.word_noise * torch.randn(getattr(x, m).shape, generator=gen)
                     for m in ("voice", "text")}
            out = model({"photo": x.photo, **words}, present)
            loss = F.cross_entropy(out.fault_logits, fault[batch], label_smoothing=recipe.label_smoothing) + \
                recipe.device_weight * F.cross_entropy(out.device_logits, device[batch],
                                                       label_smoothing=recipe.label_smoothing)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        accuracy = validation_accuracy(model, tickets.tensors.select(val), fault[val])
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_fault_accuracy": accuracy})
        if progress:
            log.info("epoch %d loss %.4f val fault accuracy %.4f", epoch + 1, np.mean(losses), accuracy)
        if accuracy > best:
            best, best_state = accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), history


#: A pool of interchangeable inputs: (modality, ticket index) -> the training tickets whose input of that modality
#: may stand in for the ticket's own.
Pools = dict[tuple[str, int], torch.Tensor]


def uninformative_pools(tickets: TicketSet, labels: dict[str, dict[str, Any]], train: torch.Tensor) -> Pools:
    """For each training ticket whose photo hides the fault, the training tickets of the same device whose photo
    hides it too (``("photo", i)``); likewise for complaints that name no fault (``("voice", i)``)."""
    rows = [labels[item] for item in tickets.item_ids]
    pools: Pools = {}
    for modality, key in (("photo", "photo_shows_fault"), ("voice", "complaint_names_fault")):
        by_device: dict[str, list[int]] = {}
        for i in train.tolist():
            if not rows[i][key]:
                by_device.setdefault(rows[i]["device"], []).append(i)
        for members in by_device.values():
            for i in members:
                pools[modality, i] = torch.tensor(members)
    return pools


def resampled(tensors: TicketTensors, batch: torch.Tensor, pools: Pools, gen: torch.Generator) -> TicketTensors:
    """The batch's inputs, each uninformative photo or complaint replaced by one drawn from its pool."""
    x = tensors.select(batch)
    for modality in ("photo", "voice"):
        values = getattr(x, modality)
        for row, i in enumerate(batch.tolist()):
            pool = pools.get((modality, i))
            if pool is not None:
                values[row] = getattr(tensors, modality)[pool[torch.randint(len(pool), (1,), generator=gen)]]
    return x


@torch.no_grad()
def validation_accuracy(model: ServiceFaultModel, tickets: TicketTensors, fault: torch.Tensor) -> float:
    """Fault accuracy of ``model`` on ``tickets`` with every modality they have."""
    model.eval()
    out = model({"photo": tickets.photo, "voice": tickets.voice, "text": tickets.text}, tickets.present)
    return float((out.fault_logits.argmax(dim=1) == fault).float().mean())
