"""The factory-line model: image + audio (+ optional text) encoders, the router, and one head per task.

Example:
    >>> cfg = InspectorConfig()
    >>> model = FactoryInspector(cfg).eval()
    >>> out = model({"image": torch.randn(2, 3, 192, 256), "audio": torch.randn(2, 1, 64, 101)})
    >>> out.logits["defect"].shape, out.logits["machine"].shape, out.modality_weights.shape, out.cam.shape
    (torch.Size([2, 5]), torch.Size([2, 3]), torch.Size([2, 3]), torch.Size([2, 5, 12, 16]))
    >>> model.save_pretrained("runs/model")        # model.safetensors + config.json (model.pretrained)
    >>> same = FactoryInspector.from_pretrained("runs/model")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model.config import MODALITIES, InspectorConfig, modality_column
from model.encoders import AudioEncoder, ImageEncoder, TextEncoder, fused_copy
from model.heads import TaskHeads
from model.pretrained import PretrainedModel
from model.router import MultimodalRouter


@dataclass
class InspectorOutput:
    """Outputs of :class:`FactoryInspector`.

    Attributes:
        logits: ``{task: (B, n_classes)}``.
        modality_weights: ``(B, 3)`` router attention mass for (image, audio, text); 0 for absent modalities.
        cam: ``(B, n_classes of config.cam_task, H/8, W/8)`` class-activation logits, or None when no image was given.
        fused: ``(B, T, d_model)`` the router's fused vector per task query (task order of ``config.classes``).
        task_weights: ``(B, T, 3)`` modality weights of each task query.
        aux_logits: ``{task: (B, n_classes)}`` deep-supervision logits read straight from the task's evidence
            modality (mean of its tokens), for training only; absent when that modality was not given.
    """

    logits: dict[str, Tensor]
    modality_weights: Tensor
    cam: Tensor | None
    fused: Tensor
    task_weights: Tensor
    aux_logits: dict[str, Tensor] = field(default_factory=dict)


class FactoryInspector(PretrainedModel, nn.Module):
    """Encoders + :class:`~model.router.MultimodalRouter` + :class:`~model.heads.TaskHeads`.

    Inputs go by modality name. Any modality may be missing, per sample, through ``present`` (``(B, M)`` bool,
    columns :data:`model.config.MODALITIES`), or for the whole batch by leaving it out of the inputs; at least
    one modality must be present in every sample.

    Args:
        config: the :class:`~model.config.InspectorConfig`.
    """

    model_type = "factory-inspector"
    config_class = InspectorConfig

    def __init__(self, config: InspectorConfig):
        super().__init__()
        self.config = config
        n_cam = len(config.classes.get(config.cam_task, []))
        self.image_encoder = ImageEncoder(
            config.image_channels, config.image_grid, n_cam, config.image_blocks, config.image_highpass,
            config.image_backbone, config.image_frozen_stages,
        )
        self.audio_encoder = AudioEncoder(config.n_mels, config.audio_channels, config.audio_time_tokens,
                                          config.d_model, config.audio_norm)
        self.text_encoder = TextEncoder(config.text_dim, config.d_model)
        encoders = self.encoders()
        self.router = MultimodalRouter(
            {m: encoders[m].out_dim for m in MODALITIES},
            {m: encoders[m].n_tokens for m in MODALITIES},
            d_model=config.d_model,
            n_heads=config.n_heads,
            layers=config.fusion_layers,
            dropout=config.dropout,
            query_modality="text",
            n_queries=len(config.classes),
        )
        self.heads = TaskHeads(config.d_model, config.classes, config.dropout)
        # deep supervision: each task also read linearly from its evidence modality's tokens, so every encoder
        # learns its task directly whatever the router attends to early in training
        self.aux_heads = nn.ModuleDict(
            {
                task: nn.Linear(encoders[config.task_modality[task]].out_dim, len(names))
                for task, names in config.classes.items()
                if task in config.task_modality
            }
        )
        self._fused = False

    def forward(self, inputs: Mapping[str, Tensor | None], present: Tensor | None = None) -> InspectorOutput:
        """Run the model.

        Args:
            inputs: input tensors by modality name; a modality left out (or None) is absent from the whole batch:

                - ``"image"``: ``(B, 3, H, W)`` normalised RGB (:func:`model.preprocess.image_tensor`), or
                  ``(B, 6, H, W)`` with the local-contrast channels appended (:func:`model.preprocess.image_batch`);
                - ``"audio"``: ``(B, 1, n_mels, frames)`` log-mel dB (:func:`model.preprocess.log_mel`);
                - ``"text"``: ``(B, text_dim)`` sentence embeddings.
            present: ``(B, M)`` bool presence per sample (columns :data:`model.config.MODALITIES`); defaults to
                "given tensors are present". Rows of a given tensor whose modality is absent are ignored (may hold
                zeros).

        Raises:
            ValueError: an unknown modality name, or no tensor at all.
        """
        # sorted by column: token order, and an unknown name raises
        given = {m: inputs[m] for m in sorted(inputs, key=modality_column) if inputs[m] is not None}
        ref = next(iter(given.values()), None)
        if ref is None:
            raise ValueError(f"FactoryInspector needs at least one of {list(MODALITIES)}")
        b, device = ref.shape[0], ref.device
        supplied = torch.tensor([m in given for m in MODALITIES], device=device)
        present = supplied.expand(b, -1) if present is None else present.to(device=device, dtype=torch.bool) & supplied

        encoders = self.encoders()
        tokens: dict[str, Tensor] = {m: encoders[m](x) for m, x in given.items()}
        cam = None
        if "image" in tokens:  # the image encoder also returns its class-activation map
            tokens["image"], cam = tokens["image"]
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        for m in MODALITIES:
            if m not in tokens:  # a modality absent from the whole batch: placeholder tokens, masked
                enc = encoders[m]
                tokens[m] = torch.zeros(b, enc.n_tokens, enc.out_dim, device=device, dtype=dtype)
        routed = self.router(tokens, present)
        aux = {
            task: head(tokens[self.config.task_modality[task]].mean(dim=1))
            for task, head in self.aux_heads.items()
            if self.config.task_modality[task] in given
        }
        return InspectorOutput(
            self.heads(routed.fused), routed.modality_weights, cam, routed.fused, routed.task_weights, aux
        )

    def encoders(self) -> dict[str, nn.Module]:
        """The encoder of each modality, by name."""
        return {"image": self.image_encoder, "audio": self.audio_encoder, "text": self.text_encoder}

    # -- inference helpers -------------------------------------------------------------------------------

    def fused_for_inference(self) -> FactoryInspector:
        """A copy in eval mode with every batch norm folded into its convolution (faster; cannot be saved)."""
        model = fused_copy(self)
        model._fused = True
        return model


class InspectorGraph(nn.Module):
    """A :class:`FactoryInspector` with every modality a positional tensor: the graph ONNX export writes
    (:func:`model.runtimes.export_onnx`) and the ONNX runtimes run.

    ``forward(image (B, 6, H, W), audio (B, 1, n_mels, frames), text (B, text_dim), present (B, M) bool)`` ->
    one logits tensor ``(B, n_classes)`` per task (``config.classes`` order), ``modality_weights`` ``(B, M)`` and
    ``cam`` ``(B, n_cam, H/8, W/8)``. An absent modality's rows hold zeros and are masked by ``present``: the
    outputs equal the inspector's with that modality left out.
    """

    #: Modules INT8 leaves fp32: the audio encoder keeps transient clicks in rare, large activations that calibrated
    #: activation ranges clip (factory-v5's machine-sound accuracy fell from 100 % to 85.5 % with it in INT8); it
    #: is a small share of the compute.
    int8_fp32_modules: tuple[str, ...] = ("model.audio_encoder",)

    def __init__(self, model: FactoryInspector):
        super().__init__()
        self.model = model
        self.output_names = [*model.config.classes, "modality_weights", "cam"]

    def forward(self, image: Tensor, audio: Tensor, text: Tensor, present: Tensor) -> tuple[Tensor, ...]:
        out = self.model({"image": image, "audio": audio, "text": text}, present)
        return (*out.logits.values(), out.modality_weights, out.cam)
