"""Leave-one-synthesiser-out for machine sound: which audio normalisation recognises a machine it never heard.

Each of the three factory renderers comes with its own machine-sound synthesiser, written independently
(``synth.render_machine_sound``, ``shaded_audio``, ``scene_audio``; ``docs/model.md``). For each synthesiser left
out and each ``InspectorConfig.audio_norm`` (``clip``: the clip's mean level removed; ``band``: each mel band's),
the factory model's audio encoder (:class:`model.encoders.AudioEncoder` at the shipped model's sizes, on the
shipped log-mel front end) with a linear head on its global token is trained from scratch on clips of the other
two (the line's class shares: 70 % normal, 15 % bearing click, 15 % imbalance hum; the training's waveform
augmentation, :func:`model.train.augment_waveforms`) and scored on held-out clips of all three (other seeds). Sound
only, so that the figure is the normalisation's, not the router's or the image's; the whole model's figures are
``cross_renderer.py``'s.

The last line is ``ratio: X`` = the mean leave-one-out machine accuracy with ``band`` / with ``clip``: how much
better the per-band normalisation recognises an unheard synthesiser's faults (an accuracy ratio, not a speed).

    python benchmarks/sound_transfer.py                      # ~10 minutes on 2 quiet cores
    python benchmarks/sound_transfer.py --held-out scene --norms band --epochs 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MachineWatch  # noqa: E402
from model.config import AUDIO_NORMS, InspectorConfig  # noqa: E402
from model.encoders import AudioEncoder  # noqa: E402
from model.preprocess import log_mel_batch  # noqa: E402
from model.train import augment_waveforms  # noqa: E402
from pipelines.lines.factory.synth import (  # noqa: E402
    HELD_OUT_RENDERERS, MACHINE_BLOCK, MACHINE_STATES, RENDERERS, deal, renderer_functions,
)

#: Seeds of each synthesiser's training and held-out clips (the recordings' seeds are never reused here).
SEEDS = {"train": 1000, "test": 2000}
#: The study's synthesisers: the renderers' that models train on (a held-out one would be trained on here).
SYNTHESISERS = tuple(r for r in RENDERERS if r not in HELD_OUT_RENDERERS)


def _clip(job: tuple[str, int, int, str]) -> np.ndarray:
    renderer, seed, index, machine = job
    return renderer_functions(renderer)[1](np.random.default_rng([seed, 9, index]), machine)[0]


def clips(renderer: str, seed: int, n: int, workers: int = 2) -> tuple[Tensor, Tensor]:
    """``n`` clips ``(n, 1, 16000)`` of ``renderer``'s machine sound, dealt in the line's shares, and their labels."""
    machines = deal(np.random.default_rng([seed, 1]), MACHINE_BLOCK, n)
    jobs = [(renderer, seed, i, machine) for i, machine in enumerate(machines)]
    with ProcessPoolExecutor(workers) as pool:
        waves = np.stack(list(pool.map(_clip, jobs, chunksize=32)))
    return torch.from_numpy(waves)[:, None], torch.tensor([MACHINE_STATES.index(m) for m in machines])


class SoundClassifier(nn.Module):
    """The factory model's audio path alone: log-mel ``(B, 1, n_mels, frames)`` -> encoder -> its global token ->
    machine logits ``(B, 3)``."""

    def __init__(self, config: InspectorConfig):
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config.n_mels, config.audio_channels, config.audio_time_tokens, config.d_model,
                                    config.audio_norm)
        self.head = nn.Linear(config.d_model, len(MACHINE_STATES))

    def forward(self, waves: Tensor) -> Tensor:
        """``(B, 1, T)`` waveforms -> ``(B, 3)`` logits."""
        return self.head(self.encoder(log_mel_batch(waves, self.config))[:, 0])


def train(model: SoundClassifier, waves: Tensor, labels: Tensor, epochs: int, seed: int, batch: int = 64) -> None:
    """AdamW with a one-cycle schedule on augmented waveforms, as the factory training augments them."""
    gen = torch.Generator().manual_seed(seed)
    steps = len(waves) // batch
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(waves), generator=gen)
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            loss = F.cross_entropy(model(augment_waveforms(waves[rows], gen)), labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def score(model: SoundClassifier, waves: Tensor, labels: Tensor) -> tuple[float, list[float]]:
    """Accuracy and per-class recall (in ``MACHINE_STATES`` order)."""
    predicted = torch.cat([model(waves[i:i + 100]).argmax(1) for i in range(0, len(waves), 100)])
    right = predicted == labels
    return right.float().mean().item(), [right[labels == k].float().mean().item() for k in range(len(MACHINE_STATES))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--held-out", nargs="+", default=list(SYNTHESISERS), choices=SYNTHESISERS,
                   help="synthesisers to leave out, one study each")
    p.add_argument("--norms", nargs="+", default=list(AUDIO_NORMS), choices=AUDIO_NORMS,
                   help="audio normalisations compared")
    p.add_argument("--train-clips", type=int, default=2400, help="training clips per synthesiser")
    p.add_argument("--test-clips", type=int, default=600, help="held-out clips per synthesiser")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="initialisation and augmentation seed")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    watch = MachineWatch()

    started = time.perf_counter()
    data = {(r, split): clips(r, SEEDS[split] + 10 * k, n)
            for k, r in enumerate(SYNTHESISERS)
            for split, n in (("train", args.train_clips), ("test", args.test_clips))}
    print(f"{len(SYNTHESISERS)} synthesisers: {args.train_clips} training and {args.test_clips} held-out clips each, "
          f"made in {time.perf_counter() - started:.0f} s")

    recall_heads = "/".join(m.split("_")[0] for m in MACHINE_STATES)
    heads = "".join(f"{'on ' + r:>10}" for r in SYNTHESISERS)
    print(f"\nmachine accuracy (%), {args.epochs} epochs; recall on the left-out synthesiser ({recall_heads})")
    print(f"{'norm':<6} {'left out':<9}{heads}  {'recall':>17} {'train s':>8}")
    left_out: dict[str, list[float]] = {norm: [] for norm in args.norms}
    for norm in args.norms:
        for held in args.held_out:
            seen = [r for r in SYNTHESISERS if r != held]
            waves = torch.cat([data[r, "train"][0] for r in seen])
            labels = torch.cat([data[r, "train"][1] for r in seen])
            torch.manual_seed(args.seed)
            model = SoundClassifier(InspectorConfig(audio_norm=norm))
            t0 = time.perf_counter()
            train(model, waves, labels, args.epochs, args.seed)
            seconds = time.perf_counter() - t0
            scores = {r: score(model, *data[r, "test"]) for r in SYNTHESISERS}
            left_out[norm].append(scores[held][0])
            cells = "".join(f"{100 * scores[r][0]:9.1f}{'*' if r == held else ' '}" for r in SYNTHESISERS)
            recall = "/".join(f"{x:.2f}" for x in scores[held][1])
            print(f"{norm:<6} {held:<9}{cells}  {recall:>17} {seconds:8.0f}", flush=True)
    print("(* the synthesiser left out of training)")
    for norm, accs in left_out.items():
        print(f"mean leave-one-out accuracy, {norm}: {100 * statistics.mean(accs):.1f} %")
    watch.verdict()
    if {"clip", "band"} <= left_out.keys():
        print(f"ratio: {statistics.mean(left_out['band']) / statistics.mean(left_out['clip']):.2f}")


if __name__ == "__main__":
    main()
