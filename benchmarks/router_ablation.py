"""Router ablation: attention routing vs fixed-weight fusion when each modality's reliability varies per sample.

The task. Each sample's label ``y`` (3 classes) is carried by **both** sensors: the image is a held-out part
whose defect class is ``IMAGE_CLASS[y]`` and the audio a clip whose machine state is ``AUDIO_CLASS[y]``
(parts and clips of the factory recordings re-paired by label, as in AV-MNIST-style benchmarks). Either
sensor alone can tell ``y``; each sample then gets its own reliability, independently per sensor:

- image: clean, **sensor noise** (Gaussian, sigma 0.25..0.5 of full scale), **occlusion** (a random patch over
  55..85 % of the frame), **missing**, or **stale** (the camera triggered late: a clean frame of another part,
  of another class; nothing in the pixels says so);
- audio: clean, **noisy** (white noise 5..15 dB above the machine), **dropped**, or **crosstalk** (a clean clip
  of the neighbouring machine, in another state);

never both missing. A third modality, the **operator note**, is present for ``NOTE_P`` of the samples: a
sentence about the sensors that shift ("camera trigger late, frames are one part behind", "microphone is picking
up press 4 next door", "no remarks", ...). It never names the label; it only says which sensor to doubt. Train
and test notes use different phrasings (``NOTES`` vs ``TEST_NOTES``). Notes are turned into 384-d vectors
by a deterministic hashed bag of words and bigrams (signed feature hashing, L2-normalised): the lock has no
sentence encoder, and a vector that only carries the words is the harder case for a router.

The trained model's image and audio encoders (``--model``) are frozen feature extractors: their tokens are
computed once for every clean and corrupted input and cached under ``~/.cache/fusionline/bench``, so the fusion
models below train in seconds. Fusion models, all trained on the same varying-reliability pairs (same epochs,
optimiser, seeds):

- ``router``: :class:`model.router.MultimodalRouter` over image, audio and note tokens, the note as the query
  when present (a learned query otherwise), key-padding masks for missing modalities, per-sample weights;
- ``concat linear``: fixed-weight fusion, the concatenated tokens of all three (zeros where missing) -> linear;
- ``static avg``: late fusion, one classifier per sensor, logits averaged with learned **static** weights
  (renormalised over the sensors present); it cannot read the note;
- ``concat MLP``: the concatenated tokens -> a one-hidden-layer MLP (early fusion; not fixed-weight: its hidden
  units can learn note-dependent gating, so it is the strongest baseline);
- ``image only`` / ``audio only``: one classifier on one sensor (reference rows).

Reported: macro-F1 on held-out pairs (the test recording) under each condition, mean over ``--seeds`` seeds;
the router's mean modality weights per condition; last line ``ratio: X`` = router macro-F1 / best other fusion
(``concat linear``, ``static avg``, ``concat MLP``) under **varying reliability** (every sample drawn from the
training mixture of conditions).

    python benchmarks/router_ablation.py   # the shipped model; recordings synthesised if missing
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import SERVING_MODEL, add_train_test_flags, start_train_test_run  # noqa: E402
from model.config import InspectorConfig, modality_column, presence_mask  # noqa: E402
from model.factory_model import FactoryInspector  # noqa: E402
from model.preprocess import log_mel_batch, normalize_images  # noqa: E402
from model.router import MultimodalRouter  # noqa: E402

IMAGE_CLASS = ("good", "scratch", "contamination")  # defect class shown by the image for label y
AUDIO_CLASS = ("normal", "bearing_click", "imbalance_hum")  # machine state heard for label y
IMAGE_STATES = ("clean", "noise", "occluded", "missing", "stale")
AUDIO_STATES = ("clean", "noisy", "dropped", "crosstalk")
MISSING, DROPPED, STALE, CROSSTALK = 3, 2, 4, 3
# the training / "varying" mixture: P(image state) x P(audio state), (missing, dropped) excluded and redrawn
IMAGE_P = (0.35, 0.15, 0.15, 0.15, 0.2)
AUDIO_P = (0.45, 0.2, 0.15, 0.2)
NOTE_P = 0.6  # share of samples with an operator note
CACHE = Path.home() / ".cache" / "fusionline" / "bench"
TEXT_DIM = 384

# what the operator writes about each sensor state (train phrasings; the test set uses TEST_NOTES)
NOTES = {
    "image": {
        "clean": ["camera fine", "images look sharp today", ""],
        "noise": ["camera gain turned up, pictures are grainy", "noisy images from the camera this shift"],
        "occluded": ["something is blocking part of the camera view", "cable hanging in front of the lens"],
        "missing": ["camera offline", "no pictures, camera down"],
        "stale": ["camera trigger late, frames are one part behind", "image sync problem, pictures show the wrong part"],
    },
    "audio": {
        "clean": ["microphone fine", "sound recording ok", ""],
        "noisy": ["loud fans near the microphone", "hiss on the audio channel"],
        "dropped": ["microphone unplugged", "no audio this shift"],
        "crosstalk": ["microphone is picking up press 4 next door", "audio channel swapped with the neighbouring machine"],
    },
}
TEST_NOTES = {
    "image": {
        "clean": ["camera working normally", ""],
        "noise": ["grainy camera images, gain set high"],
        "occluded": ["lens partly covered by a hose"],
        "missing": ["the camera is down"],
        "stale": ["camera trigger out of sync, the frames belong to the previous part"],
    },
    "audio": {
        "clean": ["audio normal", ""],
        "noisy": ["fan noise on the microphone"],
        "dropped": ["audio lost"],
        "crosstalk": ["the microphone hears the neighbouring press, not ours"],
    },
}


def note_vector(text: str, dim: int = TEXT_DIM) -> Tensor:
    """A deterministic ``(dim,)`` hashed bag of words and word bigrams (signed, L2-normalised; zeros if empty)."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    vec = torch.zeros(dim)
    for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        vec[int.from_bytes(digest[:4], "little") % dim] += 1.0 if digest[4] & 1 else -1.0
    return F.normalize(vec, dim=0) if vec.any() else vec


# -- corruptions ---------------------------------------------------------------------------------------------


def corrupt_images(images: Tensor, kind: str, gen: torch.Generator) -> Tensor:
    """uint8 ``(B, 3, H, W)`` -> float [0, 1], with sensor noise or an occluding patch."""
    x = images.float() / 255.0
    b, _, h, w = x.shape
    if kind == "noise":
        sigma = 0.25 + 0.25 * torch.rand(b, 1, 1, 1, generator=gen)
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    elif kind == "occluded":
        for i in range(b):
            area = 0.55 + 0.30 * float(torch.rand((), generator=gen))
            aspect = float(torch.empty(()).uniform_(0.6, 1.6, generator=gen))
            ph = min(h, int(round((area * h * w / aspect) ** 0.5)))
            pw = min(w, int(round(area * h * w / ph)))
            y0 = int(torch.randint(0, h - ph + 1, (), generator=gen))
            x0 = int(torch.randint(0, w - pw + 1, (), generator=gen))
            x[i, :, y0 : y0 + ph, x0 : x0 + pw] = torch.rand(3, 1, 1, generator=gen)
    return x


def corrupt_waveforms(waves: Tensor, gen: torch.Generator) -> Tensor:
    """``(B, 1, T)`` -> the same with white noise 5..15 dB louder than the clip."""
    rms = waves.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-4)
    gain_db = 5.0 + 10.0 * torch.rand(len(waves), 1, 1, generator=gen)
    noise = torch.randn(waves.shape, generator=gen) * rms * 10 ** (gain_db / 20)
    return waves + noise


# -- frozen features -----------------------------------------------------------------------------------------


def _tokens(out: object) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # the image encoder also returns its CAM


@torch.inference_mode()
def extract(model: FactoryInspector, split: str, root: Path, limit: int | None, seed: int) -> dict[str, Tensor]:
    """Tokens of every item: image ``(3 states, N, Ti, D)`` (clean, noise, occluded), audio ``(2, N, Ta, D)``."""
    from pipelines.lines.factory.datasets import load_recording

    cfg = model.config
    data = load_recording(root, InspectorConfig.from_dict(cfg.to_dict()), progress=False).data
    n = len(data) if limit is None else min(limit, len(data))
    gen = torch.Generator().manual_seed(seed)
    img_tok, aud_tok = [], []
    enc_img, enc_aud = model.image_encoder, model.audio_encoder
    t0 = time.perf_counter()
    for kind in ("clean", "noise", "occluded"):
        chunks = []
        for s in range(0, n, 64):
            x = corrupt_images(data.images[s : s + 64], kind, gen)
            chunks.append(_tokens(enc_img(normalize_images(x))))
        img_tok.append(torch.cat(chunks))
    for noisy in (False, True):
        chunks = []
        for s in range(0, n, 128):
            w = data.waveforms[s : s + 128]
            if noisy:
                w = corrupt_waveforms(w, gen)
            chunks.append(_tokens(enc_aud(log_mel_batch(w, cfg))))
        aud_tok.append(torch.cat(chunks))
    print(f"  {split}: {n} items encoded ({3 * n} images, {2 * n} clips) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return {
        "image": torch.stack(img_tok).float(),
        "audio": torch.stack(aud_tok).float(),
        "defect": data.labels["defect"][:n].clone(),
        "machine": data.labels["machine"][:n].clone(),
    }


def features(model_dir: Path, root: Path, split: str, limit: int | None, seed: int) -> dict[str, Tensor]:
    h = hashlib.sha256()
    h.update((model_dir / "model.safetensors").read_bytes())
    h.update(f"{root.resolve()}:{limit}:{seed}:v1".encode())
    manifest = root / "manifest.json"
    h.update(manifest.read_bytes() if manifest.is_file() else b"")
    path = CACHE / f"router_ablation-{split}-{h.hexdigest()[:16]}.pt"
    if path.is_file():
        print(f"  {split}: features from cache {path}", flush=True)
        return torch.load(path, weights_only=True)
    model = FactoryInspector.from_pretrained(model_dir).eval()
    feats = extract(model, split, root, limit, seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats


# -- paired task ---------------------------------------------------------------------------------------------


def make_pairs(feats: dict[str, Tensor], classes: dict[str, list[str]], n: int, gen: torch.Generator,
               notes: dict[str, dict[str, list[str]]] = NOTES, img_state: Tensor | None = None,
               aud_state: Tensor | None = None, note: bool | None = None) -> dict[str, Tensor]:
    """``n`` samples: label, an image of class IMAGE_CLASS[y] and a clip of AUDIO_CLASS[y], each in a state, and
    maybe an operator note about the states.

    States default to the varying-reliability mixture (IMAGE_P x AUDIO_P, never both missing); a stale image or
    a crosstalk clip shows another class than ``y``. ``note``: True / False forces a note on / off, None draws
    it with ``NOTE_P``.
    """
    y = torch.randint(0, 3, (n,), generator=gen)
    if img_state is None:
        img_state = torch.multinomial(torch.tensor(IMAGE_P), n, replacement=True, generator=gen)
        aud_state = torch.multinomial(torch.tensor(AUDIO_P), n, replacement=True, generator=gen)
        both = (img_state == MISSING) & (aud_state == DROPPED)
        keep = torch.tensor([p if i != DROPPED else 0.0 for i, p in enumerate(AUDIO_P)])
        aud_state[both] = torch.multinomial(keep, int(both.sum()), replacement=True, generator=gen)
    img_state = img_state.expand(n).clone()
    aud_state = aud_state.expand(n).clone()
    other = (y + torch.randint(1, 3, (n,), generator=gen)) % 3  # the class a stale frame / crosstalk clip shows
    img_class = torch.where(img_state == STALE, other, y)
    aud_class = torch.where(aud_state == CROSSTALK, other, y)
    img_idx, aud_idx = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for c in range(3):
        pool_i = torch.nonzero(feats["defect"] == classes["defect"].index(IMAGE_CLASS[c])).flatten()
        pool_a = torch.nonzero(feats["machine"] == classes["machine"].index(AUDIO_CLASS[c])).flatten()
        sel_i, sel_a = img_class == c, aud_class == c
        img_idx[sel_i] = pool_i[torch.randint(0, len(pool_i), (int(sel_i.sum()),), generator=gen)]
        aud_idx[sel_a] = pool_a[torch.randint(0, len(pool_a), (int(sel_a.sum()),), generator=gen)]
    # cached token states: image (clean, noise, occluded), audio (clean, noisy); stale / crosstalk are clean inputs
    image = feats["image"][torch.where(img_state == STALE, 0, img_state.clamp(max=2)), img_idx]
    audio = feats["audio"][torch.where(aud_state == CROSSTALK, 0, aud_state.clamp(max=1)), aud_idx]
    has_note = torch.rand(n, generator=gen) < NOTE_P if note is None else torch.full((n,), note)
    text = torch.zeros(n, TEXT_DIM)
    for i in torch.nonzero(has_note).flatten().tolist():
        parts = [_pick(notes["image"][IMAGE_STATES[img_state[i]]], gen),
                 _pick(notes["audio"][AUDIO_STATES[aud_state[i]]], gen)]
        text[i] = note_vector(", ".join(p for p in parts if p) or "no remarks")
    present = presence_mask({"image": img_state != MISSING, "audio": aud_state != DROPPED, "text": has_note}, n)
    image = image * present[:, modality_column("image"), None, None]
    audio = audio * present[:, modality_column("audio"), None, None]
    return {"image": image, "audio": audio, "text": text[:, None], "present": present, "y": y,
            "img_state": img_state, "aud_state": aud_state}


def _pick(options: list[str], gen: torch.Generator) -> str:
    return options[int(torch.randint(0, len(options), (), generator=gen))]


# -- fusion models -------------------------------------------------------------------------------------------


class RouterFusion(nn.Module):
    """MultimodalRouter over image, audio and note tokens (note as query, learned query without) + head."""

    def __init__(self, ti: int, di: int, ta: int, da: int, d_model: int = 64, n_classes: int = 3):
        super().__init__()
        self.norm = nn.ModuleDict({"image": nn.LayerNorm(di), "audio": nn.LayerNorm(da)})
        self.router = MultimodalRouter({"image": di, "audio": da, "text": TEXT_DIM},
                                       {"image": ti, "audio": ta, "text": 1}, d_model=d_model, n_heads=4, layers=1,
                                       dropout=0.1, query_modality="text", n_queries=1)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(0.1),
                                  nn.Linear(d_model, n_classes))

    def forward(self, image: Tensor, audio: Tensor, text: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        tokens = {"image": self.norm["image"](image), "audio": self.norm["audio"](audio), "text": text}
        out = self.router(tokens, present)
        return self.head(out.fused[:, 0]), out.modality_weights


def _concat(image: Tensor, audio: Tensor, text: Tensor) -> Tensor:
    return torch.cat([image.flatten(1), audio.flatten(1), text.flatten(1)], dim=1)


def _mlp(d_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(hidden, n_out))


class ConcatLinear(nn.Module):
    """Fixed-weight fusion: all modalities' tokens concatenated (zeros where missing) -> LayerNorm -> linear."""

    def __init__(self, ti: int, di: int, ta: int, da: int, n_classes: int = 3):
        super().__init__()
        d_in = ti * di + ta * da + TEXT_DIM
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Dropout(0.1), nn.Linear(d_in, n_classes))

    def forward(self, image: Tensor, audio: Tensor, text: Tensor, present: Tensor) -> tuple[Tensor, None]:
        return self.net(_concat(image, audio, text)), None


class ConcatMLP(nn.Module):
    """Early fusion: all modalities' tokens concatenated (zeros where missing) -> MLP."""

    def __init__(self, ti: int, di: int, ta: int, da: int, hidden: int = 128, n_classes: int = 3):
        super().__init__()
        self.net = _mlp(ti * di + ta * da + TEXT_DIM, hidden, n_classes)

    def forward(self, image: Tensor, audio: Tensor, text: Tensor, present: Tensor) -> tuple[Tensor, None]:
        return self.net(_concat(image, audio, text)), None


class StaticAverage(nn.Module):
    """Late fusion: a classifier per sensor, logits averaged with learned static weights over present ones."""

    def __init__(self, ti: int, di: int, ta: int, da: int, hidden: int = 128, n_classes: int = 3):
        super().__init__()
        self.img, self.aud = _mlp(ti * di, hidden, n_classes), _mlp(ta * da, hidden, n_classes)
        self.logit_w = nn.Parameter(torch.zeros(2))

    def forward(self, image: Tensor, audio: Tensor, text: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.softmax(self.logit_w, 0) * present[:, [modality_column("image"), modality_column("audio")]].float()
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        logits = w[:, :1] * self.img(image.flatten(1)) + w[:, 1:] * self.aud(audio.flatten(1))
        return logits, w


class SingleModality(nn.Module):
    def __init__(self, ti: int, di: int, ta: int, da: int, which: str, hidden: int = 128, n_classes: int = 3):
        super().__init__()
        self.which = which
        self.net = _mlp(ti * di if which == "image" else ta * da, hidden, n_classes)

    def forward(self, image: Tensor, audio: Tensor, text: Tensor, present: Tensor) -> tuple[Tensor, None]:
        return self.net((image if self.which == "image" else audio).flatten(1)), None


MODELS = {
    "router": RouterFusion,
    "concat linear": ConcatLinear,
    "static avg": StaticAverage,
    "concat MLP": ConcatMLP,
    "image only": lambda ti, di, ta, da: SingleModality(ti, di, ta, da, "image"),
    "audio only": lambda ti, di, ta, da: SingleModality(ti, di, ta, da, "audio"),
}
BASELINES = ("concat linear", "static avg", "concat MLP")


def train(model: nn.Module, data: dict[str, Tensor], epochs: int, seed: int, batch: int = 128) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.02)
    n = len(data["y"])
    steps = epochs * ((n + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            logits, _ = model(data["image"][idx], data["audio"][idx], data["text"][idx], data["present"][idx])
            loss = F.cross_entropy(logits, data["y"][idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def macro_f1(pred: Tensor, y: Tensor, k: int = 3) -> float:
    f1s = []
    for c in range(k):
        tp = ((pred == c) & (y == c)).sum().item()
        fp = ((pred == c) & (y != c)).sum().item()
        fn = ((pred != c) & (y == c)).sum().item()
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return sum(f1s) / k


@torch.inference_mode()
def evaluate(model: nn.Module, data: dict[str, Tensor]) -> tuple[float, Tensor | None]:
    logits, weights = model(data["image"], data["audio"], data["text"], data["present"])
    return macro_f1(logits.argmax(1), data["y"]), weights


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=SERVING_MODEL,
                    help="trained FactoryInspector folder (its image/audio encoders are frozen feature extractors; default: the "
                         "shipped model)")
    add_train_test_flags(ap)
    ap.add_argument("--train-items", type=int, default=1600, help="training-recording items encoded")
    ap.add_argument("--train-pairs", type=int, default=4000, help="paired training samples drawn")
    ap.add_argument("--test-pairs", type=int, default=3000, help="held-out pairs per condition")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of every fusion model")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per fusion model (scores are averaged)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    watch = start_train_test_run(args)
    t0 = time.perf_counter()

    classes = InspectorConfig.load(args.model).classes
    print(f"model {args.model}; label y carried by image {IMAGE_CLASS} and audio {AUDIO_CLASS}", flush=True)
    tr = features(args.model, args.train, "train", args.train_items, seed=1)
    te = features(args.model, args.test, "test", None, seed=2)
    ti, di = tr["image"].shape[2:]
    ta, da = tr["audio"].shape[2:]

    gen = torch.Generator().manual_seed(0)
    train_pairs = make_pairs(tr, classes, args.train_pairs, gen)
    n = args.test_pairs
    conditions: dict[str, dict[str, Tensor]] = {}

    def fixed(image: str, audio: str, note: bool | None = None, seed: int = 0) -> dict[str, Tensor]:
        i, a = IMAGE_STATES.index(image), AUDIO_STATES.index(audio)
        return make_pairs(te, classes, n, torch.Generator().manual_seed(100 + 10 * i + a + seed), TEST_NOTES,
                          torch.tensor([i]), torch.tensor([a]), note)

    conditions["varying (mixture)"] = make_pairs(te, classes, n, torch.Generator().manual_seed(99), TEST_NOTES)
    conditions["clean"] = fixed("clean", "clean")
    conditions["image noise"] = fixed("noise", "clean")
    conditions["image occluded"] = fixed("occluded", "clean")
    conditions["image missing"] = fixed("missing", "clean")
    conditions["audio noisy"] = fixed("clean", "noisy")
    conditions["audio dropped"] = fixed("clean", "dropped")
    conditions["img noise + aud noisy"] = fixed("noise", "noisy")
    conditions["image stale, note"] = fixed("stale", "clean", note=True)
    conditions["image stale, no note"] = fixed("stale", "clean", note=False, seed=1)
    conditions["audio crosstalk, note"] = fixed("clean", "crosstalk", note=True)
    conditions["audio crosstalk, no note"] = fixed("clean", "crosstalk", note=False, seed=1)

    scores = {name: {c: [] for c in conditions} for name in MODELS}
    router_w: dict[str, list[Tensor]] = {c: [] for c in conditions}
    static_w: list[Tensor] = []
    for seed in range(args.seeds):
        for name, ctor in MODELS.items():
            torch.manual_seed(seed)
            model = train(ctor(ti, di, ta, da), train_pairs, args.epochs, seed)
            for cond, data in conditions.items():
                f1, w = evaluate(model, data)
                scores[name][cond].append(f1)
                if name == "router":
                    router_w[cond].append(w.mean(0))
            if name == "static avg":
                static_w.append(torch.softmax(model.logit_w.detach(), 0))
        print(f"  seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    mean = {m: {c: sum(v) / len(v) for c, v in d.items()} for m, d in scores.items()}
    names = list(MODELS)
    print()
    print(f"macro-F1 on {n} held-out pairs per condition, mean of {args.seeds} seeds "
          f"(train: {args.train_pairs} pairs from {args.train_items} training items, varying reliability; "
          f"test notes in unseen phrasings)")
    print(f"| condition | {' | '.join(names)} | router - best other fusion |")
    print("|---|" + "---:|" * (len(names) + 1))
    for cond in conditions:
        best_other = max(mean[b][cond] for b in BASELINES)
        cells = " | ".join(f"{mean[m][cond]:.3f}" for m in names)
        print(f"| {cond} | {cells} | {mean['router'][cond] - best_other:+.3f} |")
    print()
    print("router's mean modality weights per condition, mean of seeds")
    print("| condition | image | audio | note |")
    print("|---|---:|---:|---:|")
    for cond in conditions:
        w = torch.stack(router_w[cond]).mean(0)
        print(f"| {cond} | {w[0]:.3f} | {w[1]:.3f} | {w[2]:.3f} |")
    sw = torch.stack(static_w).mean(0)
    print(f"\nstatic avg learned weights (image / audio): {sw[0]:.3f} / {sw[1]:.3f}")
    mix = "varying (mixture)"
    fixed_best = max(mean[b][mix] for b in ("concat linear", "static avg"))
    best = max(mean[b][mix] for b in BASELINES)
    print(f"under varying reliability: router {mean['router'][mix]:.3f}, best fixed-weight fusion {fixed_best:.3f} "
          f"({mean['router'][mix] - fixed_best:+.3f}), best other fusion {best:.3f} ({mean['router'][mix] - best:+.3f})")
    print(f"total {time.perf_counter() - t0:.0f} s")
    watch.verdict()
    ratio = mean["router"][mix] / best
    print(f"ratio: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
