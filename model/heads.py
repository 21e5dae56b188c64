"""Classification heads: one per task, reading the router's fused vector."""

from __future__ import annotations

from torch import Tensor, nn


class ClassificationHead(nn.Module):
    """``(B, d_model) -> (B, n_classes)`` logits: ``Linear -> GELU -> Dropout -> Linear``.

    Example:
        >>> ClassificationHead(128, 5)(torch.randn(2, 128)).shape
        torch.Size([2, 5])
    """

    def __init__(self, d_model: int, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, n_classes))

    def forward(self, fused: Tensor) -> Tensor:
        return self.net(fused)


class TaskHeads(nn.ModuleDict):
    """One :class:`ClassificationHead` per task, reading its own task query's fused vector.

    ``forward`` takes ``(B, T, d_model)`` (task order of ``classes``) and returns ``{task: (B, n_classes)}``.

    Example:
        >>> heads = TaskHeads(128, {"defect": ["good", "scratch"], "machine": ["normal", "hum", "click"]})
        >>> {k: v.shape for k, v in heads(torch.randn(2, 2, 128)).items()}
        {'defect': torch.Size([2, 2]), 'machine': torch.Size([2, 3])}
    """

    def __init__(self, d_model: int, classes: dict[str, list[str]], dropout: float = 0.1):
        super().__init__({task: ClassificationHead(d_model, len(names), dropout) for task, names in classes.items()})

    def forward(self, fused: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return {task: head(fused[:, i]) for i, (task, head) in enumerate(self.items())}
