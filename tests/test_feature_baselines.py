"""The field's feature baselines: FitNet and AT against their papers' formulas on fixed tensors,
the zoo's pre-activation features as the references define them, and the checks that connect
two networks' feature maps failing in one line before any data is read."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdrun.errors import ConfigError
from kdrun.methods import build_method
from kdrun.methods.at import attention_loss, attention_map
from kdrun.methods.base import Networks
from kdrun.methods.fitnet import HintRegressor
from kdrun.methods.losses import distillation_kl
from kdrun.models import build_model
from kdrun.validate import validate

from conftest import compose_config

MEAN, STD = [0.5] * 3, [0.25] * 3


def make(arch: str = "resnet8"):
    return build_model(arch, 4, MEAN, STD)


def method(name: str, *overrides: str, student: str = "resnet8", teacher: str = "resnet8"):
    torch.manual_seed(0)
    cfg = compose_config(f"method={name}", *overrides).method
    return build_method(cfg, Networks(make(student), make(teacher).eval(), make, image_size=16))


@pytest.mark.parametrize("train", [False, True])
def test_pre_activation_features_are_the_references_and_move_no_statistics(train):
    """RepDistiller/mdistiller `preact_feats`: a post-activation ResNet's sum before its ReLU, a
    VGG group's BN output; WRN's sums read through the next BN (the last one: the head's)."""
    x = torch.rand(4, 3, 32, 32)
    for arch in ("resnet8", "vgg8", "wrn_16_2"):
        model = make(arch).train(train)
        with torch.no_grad():  # statistics a trained network might have, so BN is no identity
            for bn in model.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
                    bn.weight.uniform_(0.5, 2)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        logits_pre, pre = model.forward_intermediates(x, pre_activation=True)
        after_pre = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        logits, post = model.forward_intermediates(x)
        assert torch.allclose(logits_pre, logits, atol=1e-5)
        assert all(torch.equal(after_pre[k], v) for k, v in model.state_dict().items())
        if arch == "wrn_16_2":
            # stage outputs are the sums themselves (the references' feats), the last one
            # before the head's BN-ReLU; pre-activation reads them through the next BN
            reads = [model.net.stages[1][0].bn1, model.net.stages[2][0].bn1,
                     model.net.head_norm[0]]
            if not train:
                for i in range(3):
                    assert torch.allclose(pre[i], reads[i](post[i]), atol=1e-5)
            assert not torch.allclose(pre[0], post[0])
        else:
            for a, b in zip(pre, post):
                assert torch.allclose(F.relu(a), b, atol=1e-6) and (a < 0).any()


def test_timm_networks_have_no_pre_activation_features_and_say_so():
    cfg = compose_config("method=fitnet", "method.pre_activation=true",
                         "student.arch=timm/resnet18", "method.guided_stage=2",
                         "method.hint_stage=1")
    with pytest.raises(ConfigError, match="pre_activation"):
        validate(cfg)


def test_the_regressor_connects_maps_as_the_crd_benchmark_does():
    c = torch.Size
    assert HintRegressor(c([8, 16, 16]), c([5, 8, 8]), "k").conv.stride == (2, 2)
    assert isinstance(HintRegressor(c([8, 8, 8]), c([5, 16, 16]), "k").conv,
                      torch.nn.ConvTranspose2d)
    assert HintRegressor(c([8, 8, 8]), c([5, 8, 8]), "k").conv.kernel_size == (1, 1)
    assert HintRegressor(c([8, 10, 10]), c([5, 7, 7]), "k").conv.kernel_size == (4, 4)
    for s, t in [(c([8, 8, 8]), c([5, 32, 32])), (c([8, 7, 7]), c([5, 8, 8]))]:
        reg = None
        with pytest.raises(ConfigError, match="cannot connect"):
            reg = HintRegressor(s, t, "k")
        assert reg is None
    out = HintRegressor(c([8, 10, 10]), c([5, 7, 7]), "k")(torch.rand(2, 8, 10, 10))
    assert out.shape == (2, 5, 7, 7)


def test_fitnet_one_stage_is_ce_plus_the_weighted_mse_of_regressed_hints():
    m = method("fitnet").train()
    images, labels = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    out = m.training_step(images, labels)
    logits, (guided,) = m.student.forward_intermediates(images, [1])
    with torch.no_grad():
        _, (hint,) = m.teacher.forward_intermediates(images, [1])
    regressed = m.regressor(guided)
    mse = sum((a - b) ** 2 for a, b in zip(regressed.flatten().tolist(),
                                          hint.flatten().tolist())) / hint.numel()
    assert out["hint"].item() == pytest.approx(mse, rel=1e-4)
    ce = F.cross_entropy(logits, labels).item()
    assert out["loss"].item() == pytest.approx(ce + 100 * mse, rel=1e-4)


def test_fitnet_two_stage_trains_up_to_the_guided_layer_then_distils():
    m = method("fitnet", "method.form=two_stage", "method.hint_epochs=3", "method.alpha=0.9",
               "method.T=4").train()
    data = object()  # the stages hand the run's data on untouched
    stages = m.stages(data, 5, run=None)
    hint = next(stages)
    assert (hint.name, hint.epochs, hint.later_epochs, hint.data) == ("hint", 3, 5, data)
    images, labels = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    out = m.training_step(images, labels)
    assert out["loss"] is out["hint"]
    out["loss"].backward()
    net = m.student.net
    assert net.fc.weight.grad is None and net.stages[2][0].conv1.weight.grad is None
    assert net.stages[1][0].conv1.weight.grad is not None
    assert m.regressor.conv.weight.grad is not None
    train = next(stages)
    assert (train.name, train.epochs) == ("train", 5)
    out = m.training_step(images, labels)
    with torch.no_grad():
        kd = distillation_kl(m.student(images), m.teacher(images), 4.0)
    assert out["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.1 * out["ce"].item() + 0.9 * kd.item(), rel=1e-5)


def test_attention_maps_and_loss_follow_the_paper_on_fixed_tensors():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)
    q = attention_map(a, 2.0)
    for n in range(2):
        by_hand = [sum(a[n, c, i, j].item() ** 2 for c in range(3)) / 3
                   for i in range(4) for j in range(4)]
        norm = math.sqrt(sum(v * v for v in by_hand))
        assert q[n].tolist() == pytest.approx([v / norm for v in by_hand], rel=1e-5)
    pooled = F.avg_pool2d(a, 2)  # the larger map is pooled to the smaller's size
    want = ((attention_map(pooled, 2.0) - attention_map(b, 2.0)) ** 2).mean()
    assert attention_loss(a, b, 2.0).item() == pytest.approx(want.item(), rel=1e-6)
    assert attention_loss(b, a, 2.0).item() == pytest.approx(want.item(), rel=1e-6)


def test_at_sums_the_attention_loss_over_every_stage_pair():
    m = method("at").train()
    images, labels = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    out = m.training_step(images, labels)
    logits, student = m.student.forward_intermediates(images)
    with torch.no_grad():
        _, teacher = m.teacher.forward_intermediates(images)
    at = sum(attention_loss(s, t, 2.0) for s, t in zip(student, teacher))
    assert len(student) == 3 and out["at"].item() == pytest.approx(at.item(), rel=1e-5)
    ce = F.cross_entropy(logits, labels).item()
    assert out["loss"].item() == pytest.approx(ce + 1000 * at.item(), rel=1e-5)


def test_at_pairs_the_deepest_stages_of_networks_of_different_depth():
    m = method("at", student="vgg8")
    assert m.student_stages == [1, 2, 3] and m.teacher_stages == [0, 1, 2]
    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    assert torch.isfinite(m.train().training_step(images, labels)["at"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=fitnet", "method.hint_stage=3"], r"method.hint_stage=\[3\].*resnet8 has 3 stages"),
    (["method=fitnet", "method.guided_stage=2", "method.hint_stage=0"], "cannot connect"),
    (["method=at", "method.student_stages=[0,1]"], "pair stages one to one"),
    (["method=at", "method.beta=-1"], "method.beta=-1"),
    (["method=fitnet", "method.form=three"], "method.form=three"),
])
def test_feature_connections_fail_in_one_line_before_the_data(overrides, message, tmp_path):
    cfg = compose_config(*overrides, "dataset.root=/nonexistent")
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_fitnet_two_stage_runs_both_stages_and_keeps_the_hint_stage_apart(tmp_path):
    from kdrun.jobs import train

    results = train(compose_config("method=fitnet", "method.form=two_stage",
                                   "method.hint_epochs=1"), tmp_path)
    assert {"hint/test/acc", "test/acc", "train/hint", "train/kd"} <= set(results)
    assert (tmp_path / "checkpoints" / "hint.pt").is_file()
    assert (tmp_path / "checkpoints" / "student.pt").is_file()


def test_hcl_is_the_papers_pyramid_of_pooled_mses_normalised_by_its_weights():
    """Per level: MSE at full size (weight 1), then pooled to 4, 2, 1 where smaller than the
    map (weights 1/2, 1/4, 1/8), divided by the weights' sum; summed over levels."""
    from kdrun.methods.reviewkd import hcl_loss

    g = torch.Generator().manual_seed(0)
    s8, t8 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    s1, t1 = torch.randn(2, 5, 1, 1, generator=g), torch.randn(2, 5, 1, 1, generator=g)

    def pooled(x, size):  # average over equal blocks, written out
        n, c, h, _ = x.shape
        k = h // size
        return x.view(n, c, size, k, size, k).mean(dim=(3, 5))

    def mse(a, b):
        return ((a - b) ** 2).mean().item()

    level8 = (mse(s8, t8) + 0.5 * mse(pooled(s8, 4), pooled(t8, 4))
              + 0.25 * mse(pooled(s8, 2), pooled(t8, 2))
              + 0.125 * mse(pooled(s8, 1), pooled(t8, 1))) / 1.875
    level1 = mse(s1, t1)  # a 1x1 map has no smaller level
    assert hcl_loss([s8, s1], [t8, t1]).item() == pytest.approx(level8 + level1, rel=1e-5)


def test_attention_fusion_weighs_the_level_and_the_deeper_residual_by_two_sigmoid_maps():
    from kdrun.methods.reviewkd import AttentionFusion

    torch.manual_seed(0)
    abf = AttentionFusion(4, 6, 5, fuse=True).eval()
    x, deeper = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    out, residual = abf(x, deeper, (16, 16))
    with torch.no_grad():
        own = abf.conv1(x)
        up = F.interpolate(deeper, (8, 8), mode="nearest")
        z = torch.sigmoid(abf.attention[0](torch.cat([own, up], 1)))
        fused = own * z[:, :1] + up * z[:, 1:]
        want = F.interpolate(fused, (16, 16), mode="nearest")
    assert torch.allclose(residual, want, atol=1e-6)
    assert torch.allclose(out, abf.conv2(want), atol=1e-6) and out.shape == (2, 5, 16, 16)


def test_reviewkd_compares_every_fused_level_with_the_teachers_pre_activation_maps():
    m = method("reviewkd").train()
    images, labels = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    out = m.training_step(images, labels)
    from kdrun.methods.reviewkd import hcl_loss

    with torch.no_grad():
        _, teacher, pooled = m.teacher.forward_stages(images, pre_activation=True)
        logits, maps, own = m.student.forward_stages(images)
        levels = [*teacher, pooled[:, :, None, None]]
        fused = m.review([*maps, own[:, :, None, None]], levels)
        review = hcl_loss(fused, levels)
    assert len(fused) == 4  # three stages and the pooled features
    assert out["review"].item() == pytest.approx(review.item(), rel=1e-5)
    ramp = 1 / 20  # the first epoch of a 20-epoch warm-up
    ce = F.cross_entropy(logits, labels).item()
    assert out["loss"].item() == pytest.approx(ce + ramp * 5 * review.item(), rel=1e-5)
