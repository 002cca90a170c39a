"""The field's logit baselines: DKD, DIST, and logit standardisation as a setting of KD and
DKD, each loss against its paper's formula on fixed tensors, written out independently."""

from __future__ import annotations

import math

import pytest
import torch

from kdrun.errors import ConfigError
from kdrun.methods.dist import dist_terms
from kdrun.methods.dkd import dkd_terms
from kdrun.methods.losses import standardize
from kdrun.validate import validate

from conftest import compose_config

S = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 1.5, 0.3, -0.7], [-0.4, 0.2, 2.2, 1.0]])
TT = torch.tensor([[3.0, 0.0, -2.0, 0.5], [0.0, 2.5, 1.0, -1.0], [0.5, -0.5, 1.5, 2.0]])
Y = torch.tensor([0, 1, 3])


def softmax(row: list[float], T: float) -> list[float]:
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_is_target_and_non_target_kl_as_the_paper_writes_them(T):
    """Eq. 2-3: b = [p_t, 1 - p_t]; p-hat = the softmax among the non-target classes."""
    tckd, nckd = dkd_terms(S, TT, Y, T)
    want_t, want_n = 0.0, 0.0
    for s, t, y in zip(S.tolist(), TT.tolist(), Y.tolist()):
        ps, pt = softmax(s, T), softmax(t, T)
        want_t += kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [i for i in range(4) if i != y]
        want_n += kl(softmax([t[i] for i in others], T), softmax([s[i] for i in others], T))
    assert tckd.item() == pytest.approx(want_t / 3 * T * T, rel=1e-5)
    assert nckd.item() == pytest.approx(want_n / 3 * T * T, rel=1e-4)


def test_dkd_with_alpha_and_beta_equal_to_one_minus_pt_weighting_is_kd():
    """The paper's Eq. 1: KD = TCKD + (1 - p_t^T) NCKD, per image."""
    from kdrun.methods.losses import distillation_kl

    for i in range(3):
        tckd, nckd = dkd_terms(S[i:i + 1], TT[i:i + 1], Y[i:i + 1], 4.0)
        p_target = softmax(TT[i].tolist(), 4.0)[Y[i]]
        kd = distillation_kl(S[i:i + 1], TT[i:i + 1], 4.0)
        assert (tckd + (1 - p_target) * nckd).item() == pytest.approx(kd.item(), rel=1e-4)


def test_dist_is_one_minus_pearson_between_and_within_classes():
    T = 4.0
    inter, intra = dist_terms(S, TT, T)
    ps = [softmax(r, T) for r in S.tolist()]
    pt = [softmax(r, T) for r in TT.tolist()]

    def pearson(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))

    want_inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt)) / 3
    columns = lambda m: [[row[c] for row in m] for c in range(4)]  # noqa: E731
    want_intra = 1 - sum(pearson(a, b) for a, b in zip(columns(ps), columns(pt))) / 4
    assert inter.item() == pytest.approx(want_inter * T * T, abs=1e-4)  # float32 arithmetic
    assert intra.item() == pytest.approx(want_intra * T * T, abs=1e-4)
    same_inter, same_intra = dist_terms(TT, TT, T)  # a student that is the teacher: no loss
    assert same_inter.item() == pytest.approx(0, abs=1e-5)
    assert same_intra.item() == pytest.approx(0, abs=1e-5)


def test_logit_standardisation_z_scores_each_row_and_is_scale_free():
    z = standardize(S)
    for row, original in zip(z.tolist(), S.tolist()):
        mean = sum(original) / 4
        std = math.sqrt(sum((v - mean) ** 2 for v in original) / 3)  # unbiased
        assert row == pytest.approx([(v - mean) / (1e-7 + std) for v in original], abs=1e-6)
    assert torch.allclose(standardize(3 * S + 5), z, atol=1e-5)  # the teacher's scale is gone


def test_kd_and_dkd_with_logit_standardisation_distil_the_z_scored_logits():
    from kdrun.methods import build_method
    from kdrun.methods.base import Networks
    from kdrun.methods.losses import distillation_kl
    from kdrun.models import build_model

    torch.manual_seed(0)
    make = lambda: build_model("resnet8", 4, [0.5] * 3, [0.25] * 3)  # noqa: E731
    teacher, images, labels = make().eval(), torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    for name in ("kd", "dkd"):
        cfg = compose_config(f"method={name}", "method.logit_standardization=true").method
        method = build_method(cfg, Networks(make(), teacher, make, 0.0))
        out = method.training_step(images, labels)
        with torch.no_grad():
            s, t = method.student(images), teacher(images)
        if name == "kd":
            want = distillation_kl(standardize(s), standardize(t), cfg.T)
            assert out["kd"].item() == pytest.approx(want.item(), rel=1e-5)
        else:
            tckd, nckd = dkd_terms(standardize(s), standardize(t), labels, cfg.T)
            assert out["nckd"].item() == pytest.approx(nckd.item(), rel=1e-5)


def test_dkd_warms_its_distillation_term_up_by_epoch_from_one(tmp_path):
    """min(epoch / warmup, 1), epochs counted from 1 as mdistiller's trainer counts them."""
    from kdrun.jobs import train

    results = train(compose_config("method=dkd", "method.warmup=4", "epochs=2"), tmp_path)
    assert "test/acc" in results
    from kdrun.methods import build_method
    from kdrun.methods.base import Networks
    from kdrun.models import build_model

    make = lambda: build_model("resnet8", 4, [0.5] * 3, [0.25] * 3)  # noqa: E731
    method = build_method(compose_config("method=dkd", "method.warmup=4").method,
                          Networks(make(), make(), make, 0.0))
    method.warmup.start(train_size=320, batch_size=32)  # 10 steps an epoch
    seen = []
    for _ in range(45):  # the trainer's host call after every step moves the ramp
        seen.append(method.warmup.factor.item())
        method.step_taken()
    assert seen[0] == seen[9] == 0.25 and seen[10] == 0.5 and seen[30] == 1.0 and seen[44] == 1.0
    state = method.state_dict()  # a resumed run's ramp comes from its step count
    state["warmup._extra_state"] = {"steps": 25}
    method.load_state_dict(state)
    assert method.warmup.factor.item() == 0.75


def test_kd_weighs_its_terms_apart_when_asked_as_kd_with_ls_does():
    """Sun et al.'s KD+LS: CE 0.1 and KD 9, which (1 - alpha, alpha) cannot express."""
    from kdrun.methods import build_method
    from kdrun.methods.base import Networks
    from kdrun.models import build_model

    torch.manual_seed(0)
    make = lambda: build_model("resnet8", 4, [0.5] * 3, [0.25] * 3)  # noqa: E731
    images, labels = torch.rand(6, 3, 16, 16), torch.arange(6) % 4
    for name in ("kd", "soft_randomization"):
        cfg = compose_config(f"method={name}", "method.ce_weight=0.1", "method.kd_weight=9",
                             "method.logit_standardization=true", "T=2", "sigma=0").method
        out = build_method(cfg, Networks(make(), make().eval(), make, 0.0)).training_step(
            images, labels)
        assert out["loss"].item() == pytest.approx(0.1 * out["ce"].item() + 9 * out["kd"].item(),
                                                   rel=1e-5)
    with pytest.raises(ConfigError, match="method.kd_weight=-1"):
        validate(compose_config("method=kd", "method.kd_weight=-1"))
