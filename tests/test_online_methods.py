"""DML, DDGSD and AFD: the mechanism each paper defines, and the protocol pieces they use
(peers, own optimisers, self-augmented batches)."""

from __future__ import annotations

import pytest
import torch

from kdrun.data import TensorSplit, make_loader
from kdrun.data.augment import color_jitter
from kdrun.errors import ConfigError
from kdrun.jobs import train
from kdrun.methods.afd import transfer_layer
from kdrun.methods.losses import distillation_kl, linear_mmd

from conftest import compose_config, make_run
from test_methods import make_method, make_optimizers, yaml_settings

DML_SETTINGS = {"T": 1.0}  # the paper's KL temperature; the rest from conf/method/dml.yaml

g = torch.Generator().manual_seed(3)
IMAGES, LABELS = torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 4, (16,), generator=g)


def peer_disagreement(method) -> float:
    """Symmetric KL between the two peers' predictions on the fixed batch (training mode)."""
    with torch.no_grad():
        a, b = (net(IMAGES) for net in method.networks)
        return (distillation_kl(a, b, 1.0) + distillation_kl(b, a, 1.0)).item()


def test_dml_kl_term_pulls_the_peers_predictions_together():
    after = {}
    for weight in (0.0, 1.0):
        method = make_method("dml", **{**DML_SETTINGS, "kl_weight": weight}).train()
        optimizers = make_optimizers(method, lr=0.1)
        for _ in range(8):
            optimizers.step(method.training_step(IMAGES, LABELS))
        after[weight] = peer_disagreement(method)
    assert after[1.0] < 0.5 * after[0.0]


def test_dml_reports_the_chosen_peer_and_evaluates_the_others():
    method = make_method("dml", **{**DML_SETTINGS, "peers": ["resnet8", "resnet14"],
                                   "student_peer": 2})
    assert method.eval_model() is method.networks[2]
    assert method.eval_model().arch == "resnet14"
    assert sorted(method.peer_models()) == ["peer0", "peer1"]
    assert method.peer_models()["peer0"] is method.student


@pytest.mark.parametrize("override, message", [
    ("method.peers=[]", "method.peers=[] is not allowed: list at least one architecture"),
    ("method.student_peer=2", "method.student_peer=2 is not allowed: it indexes the networks"),
    ("method.peers=[resnet9]", "method.peers=resnet9 is not a known architecture"),
])
def test_impossible_dml_settings_are_refused_before_any_work(override, message):
    from kdrun.validate import validate

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose_config("method=dml", override))


def test_ddgsd_views_differ_and_all_five_terms_are_present_and_finite():
    method = make_method("ddgsd").train()
    a, b = method.distort(IMAGES), method.distort(IMAGES)
    assert not torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    out = method.training_step(IMAGES, LABELS)
    terms = ("ce_a", "ce_b", "kl_ab", "kl_ba", "mmd")
    assert all(torch.isfinite(out[t]) and out[t] > 0 for t in terms)
    weights = method.settings
    total = (out["ce_a"] + out["ce_b"] + weights.kl_weight * (out["kl_ab"] + out["kl_ba"])
             + weights.mmd_weight * out["mmd"])
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)


def test_ddgsd_symmetric_kl_carries_gradient_into_both_views_unless_detached():
    grads, values = {}, {}
    for detach in (False, True):
        method = make_method("ddgsd", detach_targets=detach).train()
        torch.manual_seed(4)  # the same views both times
        out = method.training_step(IMAGES, LABELS)
        params = [p for p in method.student.parameters() if p.requires_grad]
        grads[detach] = torch.cat([g.flatten() for g in torch.autograd.grad(
            out["kl_ab"] + out["kl_ba"], params)])
        values[detach] = (out["kl_ab"] + out["kl_ba"]).item()
    assert values[False] == pytest.approx(values[True], rel=1e-6)  # the same loss value
    assert not torch.allclose(grads[False], grads[True])  # the targets' side adds gradient
    assert make_method("ddgsd").settings.detach_targets is False  # the paper's form by default


def test_ddgsd_views_and_passes_are_the_reference_codes_by_default():
    """youngerous/ddgsd-pytorch: view a flipped only, view b cropped only, no colour jitter, each
    view its own forward pass (its own BatchNorm batch statistics)."""
    method = make_method("ddgsd", hflip=True, crop_padding=4).train()
    s = method.settings
    assert (s.views, s.separate_passes, s.brightness, s.contrast, s.saturation) == (
        "flip_crop", True, 0.0, 0.0, 0.0)
    torch.manual_seed(1)
    a, b = method.views(IMAGES)
    for image, view in zip(IMAGES, a):  # each image as it is or mirrored, never moved
        assert torch.equal(view, image) or torch.equal(view, image.flip(2))
    assert not all(torch.equal(v, x) or torch.equal(v, x.flip(2)) for v, x in zip(b, IMAGES))
    logits = {}
    for separate in (True, False):
        method = make_method("ddgsd", separate_passes=separate).train()
        method.views = lambda images: (a, b)
        logits[separate] = method.training_step(IMAGES, LABELS)["logits"].detach()
        alone = make_method("ddgsd").train().student(a).detach()  # view a's statistics only
        assert torch.allclose(logits[separate], alone, atol=1e-5) == separate


def test_mmd_is_zero_for_identical_features_and_the_squared_mean_shift_otherwise():
    features = torch.randn(32, 8)
    assert linear_mmd(features, features).item() == 0
    assert linear_mmd(features, features + 0.5).item() == pytest.approx(8 * 0.25, rel=1e-5)


def test_color_jitter_draws_per_image_and_is_identity_at_zero_strength():
    images = torch.rand(1, 3, 8, 8).expand(6, -1, -1, -1)  # six copies of one image
    assert torch.equal(color_jitter(images, 0, 0, 0), images)
    jittered = color_jitter(images, 0.4, 0.4, 0.4)
    assert len({round(x.sum().item(), 4) for x in jittered}) == 6
    assert jittered.min() >= 0 and jittered.max() <= 1


def test_a_method_that_distorts_its_own_batches_gets_them_unaugmented():
    split = TensorSplit(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), torch.arange(8))
    loader = make_loader(split, 8, make_run(), train=True, augment=False)
    images, labels = next(iter(loader))
    assert torch.equal(images, split.images[labels].float() / 255)


def afd(**settings):
    return make_method("afd", **{**DML_SETTINGS, **settings}).train()


def test_afd_one_step_trains_the_discriminators():
    method = afd(feature_weight=0.0, disc_optim={**yaml_settings("afd")["disc_optim"], "lr": 1e-2})
    optimizers = make_optimizers(method, lr=1e-9)  # the networks stay put; only D learns
    losses = []
    for _ in range(6):
        out = method.training_step(IMAGES, LABELS)
        losses.append(out["loss/disc"].item())
        optimizers.step(out)
    assert losses[-1] < losses[0]


def test_afd_networks_learn_to_fool_a_discriminator_their_loss_never_trains():
    method = afd(disc_every=1000)  # D is updated on step 0 only
    optimizers = make_optimizers(method, lr=0.05)
    method.training_step(IMAGES, LABELS)  # step 0: the one discriminator update, not taken here
    method.step_taken()
    judge_before = [p.clone() for p in method.discriminators.parameters()]
    features = []
    for _ in range(5):
        out = method.training_step(IMAGES, LABELS)
        method.step_taken()
        assert "loss/disc" not in out
        features.append(out["feature"].item())
        optimizers.step(out)
        assert all(p.grad is None for p in method.discriminators.parameters())
    assert features[-1] < features[0]
    assert all(torch.equal(a, b) for a, b in zip(judge_before, method.discriminators.parameters()))


def test_transfer_layer_maps_mismatched_channels_and_sizes():
    method = afd(peers=["resnet18"])  # resnet8: 64 channels at 4x4; resnet18: 512 at 2x2
    assert [net.feature_info[-1]["num_chs"] for net in method.networks] == [64, 512]
    out = method.training_step(IMAGES, LABELS)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["loss/disc"])
    assert transfer_layer(64, 512)(torch.rand(2, 64, 4, 4)).shape == (2, 512, 4, 4)
    assert isinstance(transfer_layer(64, 64), torch.nn.Identity)


@pytest.mark.parametrize("pairing, pairs", [
    ("cyclic", [(0, 2), (1, 0), (2, 1)]),
    ("mutual", [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]),
])
def test_afd_builds_one_discriminator_per_pair(pairing, pairs):
    method = afd(peers=["resnet8", "resnet8"], pairing=pairing)
    assert method.pairs == pairs
    assert len(method.discriminators) == len(pairs) == len(method.transfers)
    assert set(method.optimizer_groups()) == {"disc"}


def test_afd_l1_alignment_needs_no_discriminator():
    method = afd(feature_loss="l1")
    assert len(method.discriminators) == 0 and method.optimizer_groups() == {}
    out = method.training_step(IMAGES, LABELS)
    assert "loss/disc" not in out and out["feature"] > 0


def test_afd_resumes_with_its_discriminators_and_step_count(tmp_path):
    overrides = ["method=afd", "method.peers=[resnet8]", "epochs=2"]
    whole = train(compose_config(*overrides), tmp_path / "whole")
    train(compose_config(*overrides, "trainer.max_steps=2"), tmp_path / "split")
    resumed = train(compose_config(*overrides, "trainer.resume=true"), tmp_path / "split")
    for key in ("test/acc", "test/loss", "peer1/test/acc", "train/loss/disc"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
    assert (tmp_path / "whole" / "checkpoints" / "peer1.pt").is_file()
