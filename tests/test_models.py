"""The zoo: every architecture's logits and stage features through the one feature contract, and
the CRD table's architectures against HobbitLong/RepDistiller@b84f547 (counted and compared
once with its own model files; no RepDistiller code here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdrun.errors import ConfigError
from kdrun.models import MODELS, build_model

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.mark.parametrize("arch", MODELS.names())
def test_zoo_logits_and_stage_features_match_feature_info(arch):
    model = build_model(arch, 7, MEAN, STD).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, features = model.forward_intermediates(x)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, model(x), atol=1e-5)
    info = model.feature_info
    assert len(features) == len(info) >= 3
    for f, i in zip(features, info):
        assert f.shape[1] == i["num_chs"] and f.shape[-1] == 32 // i["reduction"]


@pytest.mark.parametrize(("arch", "millions"), [
    ("wrn_40_2", 2.24), ("wrn_16_2", 0.69), ("resnet56", 0.86), ("resnet20", 0.27),
    ("resnet32x4", 7.43), ("resnet18", 11.17)])
def test_parameter_counts_match_the_literature(arch, millions):
    n = sum(p.numel() for p in build_model(arch, 10 if arch != "resnet32x4" else 100, MEAN,
                                           STD).parameters())
    assert abs(n / 1e6 - millions) < 0.02


def test_indices_select_stages_like_timm():
    model = build_model("wrn_16_2", 10, MEAN, STD)
    _, last_two = model.forward_intermediates(torch.rand(1, 3, 32, 32), indices=2)
    assert [f.shape[1] for f in last_two] == [64, 128]
    _, first = model.forward_intermediates(torch.rand(1, 3, 32, 32), indices=[0])
    assert [f.shape[1] for f in first] == [32]


def test_timm_models_by_name_share_the_contract():
    model = build_model("timm/resnet18", 5, MEAN, STD).eval()
    logits, features = model.forward_intermediates(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 5)
    assert [f.shape[1] for f in features] == [i["num_chs"] for i in model.feature_info]


def test_normalisation_lives_inside_the_model():
    model = build_model("resnet8", 3, MEAN, STD).eval()
    x = torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = model.net((x - mean) / std)
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert "mean" not in model.state_dict()  # checkpoints hold weights only


def test_classifier_dropout_is_active_in_training_only():
    model = build_model("resnet8", 3, MEAN, STD, drop_rate=0.5)
    x = torch.rand(4, 3, 16, 16)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_networks_without_residual_blocks_refuse_stochastic_depth_in_one_line():
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError, match="vgg8 has no residual blocks"):
        build_model("vgg8", 10, MEAN, STD, drop_path_rate=0.2)


NEW = ["mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet50"]


@pytest.mark.parametrize(("arch", "parameters"), [
    ("mobilenetv2", 812_836), ("shufflenetv1", 949_258), ("shufflenetv2", 1_355_528),
    ("resnet50", 23_705_252), ("vgg8", 3_965_028), ("vgg13", 9_462_180)])
def test_parameter_counts_match_repdistiller_exactly(arch, parameters):
    """RD's mobile_half, ShuffleV1, ShuffleV2, ResNet50 and VGG (conv biases included) at 100
    classes (the CRD table's 0.81M, 0.95M, 1.36M, 23.71M, 3.97M, 9.46M): a layer or a width
    off changes the count."""
    model = build_model(arch, 100, MEAN, STD)
    assert sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.parametrize(("arch", "stages", "pooled"), [
    ("mobilenetv2", [(12, 2), (16, 4), (48, 8), (160, 16)], 1280),
    ("shufflenetv1", [(240, 2), (480, 4), (960, 8)], 960),
    ("shufflenetv2", [(116, 2), (232, 4), (464, 8)], 1024),
    ("resnet50", [(256, 1), (512, 2), (1024, 4), (2048, 8)], 2048),
    # the first conv group is the stem; no pooling before the last (4x4 at 32 pixels)
    ("vgg13", [(128, 2), (256, 4), (512, 8), (512, 8)], 512)])
def test_stages_are_those_repdistiller_reports(arch, stages, pooled):
    """(channels, reduction) of RD's is_feat maps between f0 and the pooled vector; the 1x1
    head conv of MobileNetV2 and ShuffleNetV2 widens the pooled vector, not the last stage."""
    model = build_model(arch, 100, MEAN, STD).eval()
    assert [(i["num_chs"], i["reduction"]) for i in model.feature_info] == stages
    _, embedding = model.forward_embedding(torch.rand(1, 3, 32, 32))
    assert embedding.shape == (1, pooled)


@pytest.mark.parametrize("arch", NEW)
def test_pre_activation_features_are_the_outputs_before_their_relu(arch):
    """relu(pre-activation) is the stage output; MobileNetV2's stages end linear (pre = post)."""
    model = build_model(arch, 7, MEAN, STD).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, post = model.forward_intermediates(x)
    same_logits, pre = model.forward_intermediates(x, pre_activation=True)
    assert torch.allclose(same_logits, logits, atol=1e-5)
    for before, after in zip(pre, post):
        if arch == "mobilenetv2":
            assert torch.equal(before, after)
        else:
            assert (before < 0).any() and torch.allclose(F.relu(before), after, atol=1e-6)


@pytest.mark.parametrize(("arch", "dropped_blocks"), [
    ("mobilenetv2", 10), ("shufflenetv1", 13), ("resnet50", 15)])
def test_stochastic_depth_drops_only_residual_branches(arch, dropped_blocks):
    """Blocks that add an identity (MobileNetV2, ShuffleNet's stride-1 units) or a shortcut
    (ResNet); the first ResNet block's rate is 0."""
    model = build_model(arch, 3, MEAN, STD, drop_path_rate=0.5)
    assert sum(type(m).__name__ == "DropPath" for m in model.modules()) == dropped_blocks
    x = torch.rand(4, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))


def test_shufflenetv2_refuses_stochastic_depth_in_one_line():
    with pytest.raises(ConfigError, match="shufflenetv2 has no residual blocks"):
        build_model("shufflenetv2", 10, MEAN, STD, drop_path_rate=0.2)
