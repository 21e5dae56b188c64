"""The medical line's model: a CT series (+ the clinical record and note, when present) -> a lung-nodule finding.

Coarse to fine, so it runs on a few CPU cores:

1. **CT preprocessing** (:func:`ct_grid`, MONAI ``Spacing`` + ``ScaleIntensityRange``): the series in Hounsfield
   units is resampled to the fine grid (``config.spacing_mm``) and windowed to ``[0, 1]``.
2. **Candidates** (:mod:`model.blobs`): the peaks of a scale-space blob filter inside the lungs, each described by
   what the filter measured there (the response and the Hessian's curvatures at every scale: a nodule curves down in
   all three directions, a vessel in two, the chest wall in one); a gradient-boosted tree ensemble fitted on the
   training recording's peaks (:class:`~model.tree_ensemble.TreeEnsemble`) ranks them and the ``K`` best are the
   candidates (:meth:`NoduleFusionModel.locate`).
3. **Crop encoder** (MONAI ``Convolution``/``ResidualUnit`` blocks): a cube of the fine grid around each
   candidate (CT and blob-response channels) -> an embedding, whether the candidate is the nodule, the offset from
   the candidate to the nodule's centre (mm) and its diameter (log mm). The best candidate is the case's CT evidence.
4. **Fusion**: the CT tokens (best candidate, summary of all candidates), the record token (structured features
   with missing flags) and the note token (frozen MiniLM embedding, :mod:`model.text`) go through
   :class:`~model.router.MultimodalRouter`, one query per task (nodule, malignancy, diameter); absent modalities
   are masked and get weight 0. Presence adds the router's head to the best candidate's own logit.

Example:
    >>> model = NoduleFusionModel(NoduleConfig(record_features=["age_years", "pack_years"])).eval()
    >>> fine = ct_grid(volume_hu, spacing_mm, model.config)[None]             # (1, 1, Z, Y, X)
    >>> crops, centres = model.locate(fine)                                   # (1, K, 2, S, S, S), (1, K, 3)
    >>> out = model({"ct": crops, "record": torch.zeros(1, 4), "note": torch.zeros(1, 384)})
    >>> out.nodule_logit.shape, out.modality_weights.shape                   # (1,), (1, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blobs import find_blobs
from model.nodule_config import NODULE_MODALITIES, NODULE_TASKS, NoduleConfig
from model.pretrained import PretrainedModel
from model.router import MultimodalRouter, given_modalities
from model.tree_ensemble import TreeEnsemble


# -- CT preprocessing (arrays in, tensors out) ---------------------------------------------------------------


def ct_grid(volume_hu: np.ndarray | Tensor, spacing_mm: Sequence[float], config: NoduleConfig) -> Tensor:
    """A series' volume on the model's fine grid: ``(Z, Y, X)`` HU at ``spacing_mm`` (slice, row, column) ->
    ``(1, Z', Y', X')`` float32 in ``[0, 1]`` at ``config.spacing_mm`` (voxel ``j`` of the fine grid lies at
    ``j * config.spacing_mm`` mm from voxel 0 of the series, as voxel ``i`` of the series lies at ``i * spacing_mm``).
    """
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRange, Spacing

    image = torch.as_tensor(np.asarray(volume_hu, np.float32))[None]
    affine = torch.diag(torch.tensor([*map(float, spacing_mm), 1.0], dtype=torch.float64))
    resampled = Spacing(pixdim=config.spacing_mm, mode="bilinear", padding_mode="border")(
        MetaTensor(image, affine=affine))
    low, high = config.hu_window
    windowed = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(resampled)
    return windowed.as_tensor().float().contiguous() if isinstance(windowed, MetaTensor) else windowed.float()


def cut_crops(grid: Tensor, centres: Tensor, size: int) -> Tensor:
    """Cubes of ``size`` voxels around ``centres``: ``grid (C, Z, Y, X)``, ``centres (K, 3)`` (voxel indices,
    rounded) -> ``(K, C, size, size, size)``; outside the grid reads 0 (air)."""
    half = size // 2
    padded = F.pad(grid, (half, size, half, size, half, size))
    at = centres.round().long()
    return torch.stack([padded[:, z : z + size, y : y + size, x : x + size] for z, y, x in at.tolist()])


# -- modules ------------------------------------------------------------------------------------------------


class CropEncoder(nn.Module):
    """A candidate's fine-grid cube -> its embedding and its own findings.

    Shapes: ``crops (N, 2, S, S, S)`` (windowed CT, blob response) -> :class:`CandidateOutput` with ``embedding
    (N, d)``, ``logit (N,)`` (the candidate is the nodule), ``offset_mm (N, 3)`` (candidate -> nodule centre, slice /
    row / column), ``log_diameter (N,)`` (log mm).
    """

    def __init__(self, channels: Sequence[int], d_out: int, dropout: float = 0.1):
        super().__init__()
        from monai.networks.blocks import Convolution, ResidualUnit

        stages: list[nn.Module] = [Convolution(3, 2, channels[0], strides=1, kernel_size=3, norm="batch", act="relu")]
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            stages.append(ResidualUnit(3, c_in, c_out, strides=2, kernel_size=3, subunits=1, norm="batch", act="relu"))
        stages.append(ResidualUnit(3, channels[-1], channels[-1], strides=2, kernel_size=3, subunits=1, norm="batch",
                                   act="relu"))
        self.features = nn.Sequential(*stages)
        self.embed = nn.Sequential(nn.Linear(2 * channels[-1], d_out), nn.GELU(), nn.Dropout(dropout))
        self.heads = nn.Linear(d_out, 5)  # logit, offset (3), log diameter

    def forward(self, crops: Tensor) -> CandidateOutput:
        maps = self.features(crops)
        pooled = torch.cat([maps.mean(dim=(2, 3, 4)), maps.amax(dim=(2, 3, 4))], dim=1)
        embedding = self.embed(pooled)
        out = self.heads(embedding)
        return CandidateOutput(embedding, out[:, 0], out[:, 1:4] * OFFSET_SCALE_MM, out[:, 4] + LOG_DIAMETER_PRIOR)


#: Scales of the crop heads' raw outputs: offsets in units of 10 mm, diameters around e^2.2 = 9 mm.
OFFSET_SCALE_MM = 10.0
LOG_DIAMETER_PRIOR = 2.2


@dataclass
class CandidateOutput:
    """Per-candidate outputs of :class:`CropEncoder` (shapes in its docstring; leading dims may be ``(B, K)``)."""

    embedding: Tensor
    logit: Tensor
    offset_mm: Tensor
    log_diameter: Tensor


@dataclass
class NoduleOutput:
    """Outputs of :class:`NoduleFusionModel` for ``B`` cases with ``K`` candidates each.

    Attributes:
        nodule_logit: ``(B,)`` a nodule is present: the best candidate's logit (where the CT is present) plus the
            router's presence head.
        malignancy_logit: ``(B,)`` the nodule is malignant (meaningful where one is present).
        log_diameter: ``(B,)`` the nodule's diameter, log mm.
        best: ``(B,)`` long, the candidate taken as the nodule (highest candidate logit).
        offset_mm: ``(B, 3)`` from the best candidate to the nodule's centre (slice, row, column), mm.
        candidates: the per-candidate outputs, leading dims ``(B, K)``.
        modality_weights: ``(B, 3)`` router attention mass per modality (:data:`NODULE_MODALITIES`), mean over tasks;
            0 for absent modalities, sums to 1.
        task_weights: ``(B, 3, 3)`` attention mass per modality for each task (:data:`NODULE_TASKS`).
        embedding: ``(B, embedding_dim)`` the fused case vector, L2-normalised (similar cases).
    """

    nodule_logit: Tensor
    malignancy_logit: Tensor
    log_diameter: Tensor
    best: Tensor
    offset_mm: Tensor
    candidates: CandidateOutput
    modality_weights: Tensor
    task_weights: Tensor
    embedding: Tensor


class NoduleFusionModel(PretrainedModel, nn.Module):
    """Blob candidates + crop encoder + record and note encoders + :class:`~model.router.MultimodalRouter` + heads.

    Inputs go by modality name (:data:`NODULE_MODALITIES`); any modality may be absent per sample (``present``) or
    for the whole batch (left out), as long as one is left in each sample. Candidates are found apart from
    :meth:`forward` (:meth:`locate`: one series at a time, whole volume), so training and evaluation can cache them.

    Args:
        config: the :class:`~model.nodule_config.NoduleConfig`.
    """

    model_type = "nodule-fusion"
    config_class = NoduleConfig

    def __init__(self, config: NoduleConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.ranker = TreeEnsemble(config.ranker_nodes, config.ranker_trees)
        self.crop_encoder = CropEncoder(config.crop_channels, d, config.dropout)
        self.summary = nn.Sequential(nn.Linear(2 * config.candidates, d), nn.GELU())
        self.record_encoder = nn.Sequential(nn.Linear(config.record_dim, d), nn.GELU(), nn.Linear(d, d))
        self.note_encoder = nn.Sequential(nn.Linear(config.text_dim, d), nn.GELU(), nn.Linear(d, d))
        self.router = MultimodalRouter(
            {m: d for m in NODULE_MODALITIES}, {"ct": 2, "record": 1, "note": 1}, d_model=d, n_heads=config.n_heads,
            layers=config.fusion_layers, dropout=config.dropout, query_modality="", n_queries=len(NODULE_TASKS))
        self.heads = nn.ModuleDict({task: nn.Sequential(nn.Dropout(config.dropout), nn.Linear(d, 1))
                                    for task in NODULE_TASKS})
        self.project = nn.Linear(d * len(NODULE_TASKS), config.embedding_dim)

    # -- candidates (one series, whole volume) ---------------------------------------------------------------

    @torch.no_grad()
    def locate(self, fine: Tensor) -> tuple[Tensor, Tensor]:
        """Candidates of one series: ``fine (1, 1, Z, Y, X)`` (:func:`ct_grid`) -> crops ``(1, K, 2, S, S, S)`` and
        their centres ``(1, K, 3)`` in fine-grid voxels (float)."""
        blobs = find_blobs(fine[0, 0].cpu().numpy(), self.config, self.rank_peaks if self.ranker.fitted else None)
        centres = torch.from_numpy(blobs.centres).float()
        return self.candidate_crops(fine[0], blobs.response, centres)[None], centres[None]

    def rank_peaks(self, features: np.ndarray) -> np.ndarray:
        """The ranker's logits ``(P,)`` for peak features ``(P, F)`` (:class:`~model.blobs.Peaks`)."""
        return self.ranker(torch.from_numpy(features)).numpy()

    def candidate_crops(self, fine: Tensor, response: np.ndarray, centres: Tensor) -> Tensor:
        """``fine (1, Z, Y, X)``, the blob filter's ``response (Z, Y, X)`` (:class:`~model.blobs.Blobs`) and
        ``centres (K, 3)`` (fine voxels) -> ``(K, 2, S, S, S)`` crops."""
        channels = torch.cat([fine, torch.from_numpy(response)[None].to(fine)], dim=0)
        return cut_crops(channels, centres.cpu(), self.config.crop_size)

    # -- fusion -----------------------------------------------------------------------------------------------

    def forward(self, inputs: Mapping[str, Tensor | None], present: Tensor | None = None) -> NoduleOutput:
        """Run the crop encoder, the record and note encoders, the router and the heads.

        Args:
            inputs: tensors by modality name; one left out (or None) is absent from the whole batch:

                - ``"ct"``: ``(B, K, 2, S, S, S)`` candidate crops (:meth:`locate`);
                - ``"record"``: ``(B, record_dim)`` normalised features and missing flags;
                - ``"note"``: ``(B, text_dim)`` the note's sentence embedding.
            present: ``(B, 3)`` bool per sample (columns :data:`NODULE_MODALITIES`); default: the given ones.

        Raises:
            ValueError: an unknown modality name, or no tensor at all.
        """
        given, present, ref = given_modalities(inputs, present, NODULE_MODALITIES, "NoduleFusionModel")
        b, device, d, k = ref.shape[0], ref.device, self.config.d_model, self.config.candidates

        zeros = ref.new_zeros
        if "ct" in given:
            crops = given["ct"]
            flat = self.crop_encoder(crops.flatten(0, 1))
            cand = CandidateOutput(*(t.unflatten(0, (b, k)) for t in (flat.embedding, flat.logit, flat.offset_mm,
                                                                       flat.log_diameter)))
            best = cand.logit.argmax(dim=1)
            pick = torch.arange(b, device=device)
            ranked = cand.logit.sort(dim=1, descending=True).values
            blob_peak = crops[:, :, 1].amax(dim=(2, 3, 4)).sort(dim=1, descending=True).values
            ct_tokens = torch.stack([cand.embedding[pick, best], self.summary(torch.cat([ranked, blob_peak], 1))], 1)
            offset = cand.offset_mm[pick, best]
        else:
            cand = CandidateOutput(zeros(b, k, d), zeros(b, k), zeros(b, k, 3), zeros(b, k))
            best, offset, ct_tokens = torch.zeros(b, dtype=torch.long, device=device), zeros(b, 3), zeros(b, 2, d)
        tokens = {
            "ct": ct_tokens,
            "record": self.record_encoder(given["record"])[:, None] if "record" in given else zeros(b, 1, d),
            "note": self.note_encoder(given["note"])[:, None] if "note" in given else zeros(b, 1, d),
        }
        routed = self.router(tokens, present)
        out = {task: self.heads[task](routed.fused[:, i]).squeeze(1) for i, task in enumerate(NODULE_TASKS)}
        if "ct" in given:  # presence starts from the best candidate's own logit; the router adds the context
            ct_seen = present[:, NODULE_MODALITIES.index("ct")]
            out["nodule"] = out["nodule"] + torch.where(ct_seen, cand.logit[pick, best], 0.0)
        embedding = F.normalize(self.project(routed.fused.flatten(1)), dim=1)
        return NoduleOutput(out["nodule"], out["malignancy"], out["diameter"] + LOG_DIAMETER_PRIOR, best, offset, cand,
                            routed.modality_weights, routed.task_weights, embedding)
