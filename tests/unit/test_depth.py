"""GatedEncoder: full depth at threshold >= 1, first exit at 0, batch-subset consistency, gate gradients with the
compute penalty, skip-rate accounting, halting distribution, safetensors round trip, a tiny training run."""

from __future__ import annotations

import pytest
import torch

from model.lab.depth import (
    DepthConfig,
    DepthTrainConfig,
    GatedEncoder,
    depth_loss,
    fit_depth,
    halting_distribution,
)

N_MELS, FRAMES, L = 16, 24, 6


def tiny(exit_every: int = 1, seed: int = 0) -> GatedEncoder:
    torch.manual_seed(seed)
    cfg = DepthConfig(n_mels=N_MELS, stem_channels=(4,), channels=8, expansion=2, num_blocks=L, exit_every=exit_every,
                      head_dim=8, n_classes=3, classes=["normal", "click", "hum"], compute_weight=0.5)
    model = GatedEncoder(cfg)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mels(b: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, N_MELS, FRAMES, generator=g) * 10 - 40


@torch.no_grad()
def test_threshold_one_or_more_is_full_depth_exactly() -> None:
    model, x = tiny(), mels()
    full = model.forward_full(x)
    assert torch.equal(full, model.forward_all(x).logits[-1])
    for threshold in (1.0, 1.5):
        out = model(x, threshold=threshold)
        assert torch.equal(out.logits, full)
        assert (out.exit_block == L).all()
        assert out.skip_rate == 0.0


@torch.no_grad()
def test_threshold_zero_exits_at_the_first_gate() -> None:
    for every in (1, 2):
        model, x = tiny(every), mels()
        out = model(x, threshold=0.0)
        assert (out.exit_block == every).all()
        torch.testing.assert_close(out.logits, model.forward_all(x).logits[0], atol=1e-5, rtol=1e-5)
        assert out.skip_rate == pytest.approx(1 - every / L)


@torch.no_grad()
def test_early_exits_match_the_full_model_at_their_exit_and_rows_leave_the_batch() -> None:
    model, x = tiny(), mels(32)
    for head in model.exits:  # gates that vary a lot between samples
        torch.nn.init.normal_(head.gate.weight, std=3.0)
    gates = torch.sigmoid(model.forward_all(x).gate_logits)
    threshold = float(gates[0].median())  # about half the samples leave at the first exit
    all_exits = model.forward_all(x)
    out = model(x, threshold=threshold)
    # expected exit: the first exit whose halting probability exceeds the threshold (the last one otherwise)
    over = torch.cat([gates[:-1] > threshold, torch.ones(1, len(x), dtype=torch.bool)])
    first = over.float().argmax(0)
    assert torch.equal(out.exit_block, first + 1)
    assert 1 < len(first.unique()) and (first < L - 1).any()  # several exits used, some samples left early
    expected = all_exits.logits[first, torch.arange(len(x))]
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)

    # the blocks really run on fewer rows
    rows: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0])) for b in model.blocks]
    model(x, threshold=threshold)
    for h in hooks:
        h.remove()
    assert rows[0] == len(x)
    assert rows == [int((out.exit_block > i).sum()) for i in range(len(rows))]


@torch.no_grad()
def test_skip_rate_accounting() -> None:
    model, x = tiny(exit_every=2), mels(10)
    out = model(x, threshold=0.5)
    assert set(out.exit_block.tolist()) <= {2, 4, 6}
    assert out.skip_rate == pytest.approx(1 - out.exit_block.sum().item() / (len(x) * L))


def test_halting_distribution_sums_to_one_and_follows_the_gates() -> None:
    g = torch.tensor([[0.0, 5.0], [2.0, -3.0], [-9.0, -9.0]])  # (K=3, B=2); the last row is ignored
    p = halting_distribution(g)
    torch.testing.assert_close(p.sum(0), torch.ones(2))
    h = torch.sigmoid(g)
    torch.testing.assert_close(p[:, 0], torch.stack([h[0, 0], (1 - h[0, 0]) * h[1, 0],
                                                     (1 - h[0, 0]) * (1 - h[1, 0])]))


def test_gradient_reaches_every_gate_through_the_compute_penalty() -> None:
    model, x = tiny(), mels(8)
    model.train()
    y = torch.randint(0, 3, (8,))
    parts = depth_loss(model.forward_all(x), y, model.config)
    parts["loss"].backward()
    for k, head in enumerate(model.exits[:-1]):  # the last gate is unused: the last exit always halts
        assert head.gate.weight.grad is not None and head.gate.weight.grad.abs().sum() > 0, k
    # the compute term alone pushes the first gate towards stopping (its logit up)
    model.zero_grad()
    out = model.forward_all(x)
    cost_only = depth_loss(out, y, model.config, task_weight=0.0)
    p = halting_distribution(out.gate_logits)
    depth = torch.tensor(model.config.exit_blocks, dtype=torch.float32)[:, None]
    (p * depth).sum(0).mean().backward()
    assert model.exits[0].gate.bias.grad.item() < 0  # more halting at exit 1 -> fewer expected blocks
    assert 1 <= cost_only["expected_blocks"].item() <= L


def test_save_load_round_trip_is_bit_exact(tmp_path) -> None:
    model, x = tiny(exit_every=2), mels()
    model.save_pretrained(tmp_path / "m", threshold=0.7)
    loaded = GatedEncoder.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        a, b = model(x, threshold=0.5), loaded(x, threshold=0.5)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.exit_block, b.exit_block)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="SHA-256"):
        GatedEncoder.from_pretrained(tmp_path / "m")


@torch.no_grad()
def test_fused_copy_matches() -> None:
    model, x = tiny(), mels()
    fused = model.fused_for_inference()
    a, b = model(x, threshold=0.5), fused(x, threshold=0.5)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError):
        fused.save_pretrained("/nonexistent")


def test_tiny_training_runs_and_returns_history() -> None:
    model = tiny(exit_every=2)
    x = mels(24)
    y = torch.arange(24) % 3
    history = fit_depth(model, x, y, DepthTrainConfig(epochs=1, gate_epochs=2, gate_fraction=0.25, batch_size=8,
                                                      gate_views=2, progress=False, threads=1))
    assert len(history["train_loss"]) == 1 and len(history["gates_loss"]) == 2
    assert len(history["gate_index"]) == 6
    assert not model.training and all(p.requires_grad for p in model.parameters())
