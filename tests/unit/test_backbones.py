"""The packaged EfficientNet-Lite0 weights load into timm's model by position, offline, and see a cat."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage import data

from model.backbones import LiteTrunk, efficientnet_lite0, load_by_position, normalize_lite

EGYPTIAN_CAT = 285  # ImageNet class index


def test_pretrained_lite0_classifies_chelsea_as_an_egyptian_cat() -> None:
    net = efficientnet_lite0()
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 300, 451) RGB
    x = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.inference_mode():
        probs = net(normalize_lite(x)).softmax(dim=1)[0]
    assert int(probs.argmax()) == EGYPTIAN_CAT
    assert float(probs[EGYPTIAN_CAT]) > 0.5


def test_untrained_lite0_does_not_see_the_cat() -> None:  # the weights, not the architecture, carry the answer
    torch.manual_seed(0)
    net = efficientnet_lite0(pretrained=False)
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        probs = net(normalize_lite(F.interpolate(image, size=(224, 224), mode="bilinear"))).softmax(dim=1)[0]
    assert float(probs[EGYPTIAN_CAT]) < 0.1


def test_load_by_position_refuses_a_mismatch_naming_the_tensors() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    good = {f"w{i}": v.clone() + 1 for i, v in enumerate(state.values())}  # other names, same order
    load_by_position(net, good)
    assert torch.equal(net[0].weight, good["w0"])
    with pytest.raises(ValueError, match="does not fit"):
        load_by_position(net, {**good, "w0": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="tensors to load"):
        load_by_position(net, {"w0": good["w0"]})


def test_lite_trunk_keeps_imagenet_in_its_frozen_stages_and_trains_the_rest() -> None:
    trunk = LiteTrunk(32)
    reference = efficientnet_lite0()
    assert torch.equal(trunk.stem[0].weight, reference.conv_stem.weight)  # ImageNet weights, not a fresh init
    assert not any(p.requires_grad for p in trunk.stem.parameters())
    assert not any(p.requires_grad for p in trunk.stages[1].parameters())
    assert all(p.requires_grad for p in trunk.stages[2].parameters())
    trunk.train()
    assert not trunk.stem[1].training and trunk.stages[2][0].bn1.training  # frozen batch norms keep their statistics
    images = torch.randn(2, 3, 96, 128)
    out = trunk(images)
    assert out.shape == (2, 32, 12, 16)
    out.mean().backward()
    assert trunk.stem[0].weight.grad is None and trunk.stages[3][0].conv_pw.weight.grad is not None


def test_inspector_with_the_pretrained_backbone_saves_and_reloads(tmp_path) -> None:
    from model.config import InspectorConfig
    from model.factory_model import FactoryInspector

    with pytest.raises(ValueError, match="highpass must be 0"):
        FactoryInspector(InspectorConfig(image_backbone="efficientnet_lite0"))
    model = FactoryInspector(InspectorConfig(image_backbone="efficientnet_lite0", image_highpass=0)).eval()
    model.save_pretrained(tmp_path)
    again = FactoryInspector.from_pretrained(tmp_path).eval()
    image = torch.randn(1, 3, 192, 256)
    with torch.inference_mode():
        tokens, cam = model.image_encoder(image)
        assert torch.equal(tokens, again.image_encoder(image)[0])
    assert tokens.shape == (1, 6, 96) and cam.shape == (1, 5, 24, 32)


@pytest.mark.parametrize("frozen", [0, 3, 5])
def test_the_config_sets_how_much_of_the_trunk_stays_frozen_and_a_saved_model_keeps_it(tmp_path, frozen) -> None:
    from model.config import InspectorConfig
    from model.factory_model import FactoryInspector

    config = InspectorConfig(image_backbone="efficientnet_lite0", image_highpass=0, image_frozen_stages=frozen)
    FactoryInspector(config).save_pretrained(tmp_path)
    trunk = FactoryInspector.from_pretrained(tmp_path).image_encoder.features
    assert not any(p.requires_grad for p in trunk.stem.parameters())
    tuned = [any(p.requires_grad for p in stage.parameters()) for stage in trunk.stages]
    assert tuned == [i >= frozen for i in range(len(trunk.stages))]
    assert all(p.requires_grad for p in trunk.lateral8.parameters())  # the projections train even at 5
    trunk.train()
    assert [stage[0].bn1.training for stage in trunk.stages] == tuned  # frozen norms keep ImageNet's statistics
    with pytest.raises(ValueError, match="image_frozen_stages 6"):
        InspectorConfig(image_frozen_stages=6)
