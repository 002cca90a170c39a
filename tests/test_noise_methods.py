"""Noise as a Resource: each noise lands where the paper puts it, at the configured rate, and
a seeded run repeats exactly."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.data.noise import flip_labels, gaussian_noise, shuffle_outputs
from kdrun.jobs import train
from kdrun.methods import Networks, build_method
from kdrun.models import build_model

from conftest import compose_config

MEAN, STD = [0.5, 0.5, 0.5], [0.1, 0.2, 0.4]


def method(name: str, shuffle: float = 0.0, **settings):
    torch.manual_seed(0)
    student = build_model("resnet8", 10, MEAN, STD)
    teacher = build_model("resnet8", 10, MEAN, STD)
    distills = name != "gaussian_aug"
    kd = {"alpha": 0.9, "T": 4.0, "logit_standardization": False}
    cfg = OmegaConf.create({"name": name, **(kd if distills else {}), **settings})
    return build_method(cfg, Networks(student, teacher,
                                      teacher_output_shuffle=shuffle)).train()


def record_inputs(module):
    seen = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_soft_randomization_noises_the_student_input_only():
    m = method("soft_randomization", sigma=0.2, noise_space="pixel")
    student_in, teacher_in = record_inputs(m.student), record_inputs(m.teacher)
    images = torch.rand(64, 3, 16, 16)
    m.training_step(images, torch.arange(64) % 10)
    assert torch.equal(teacher_in[0], images)
    delta = student_in[0] - images
    assert delta.std().item() == pytest.approx(0.2, rel=0.03)
    assert delta.mean().abs().item() < 0.01


def test_normalized_noise_space_scales_by_the_channel_std():
    noise = gaussian_noise(torch.zeros(256, 3, 16, 16), 0.5, "normalized", torch.tensor(STD))
    per_channel = noise.transpose(0, 1).flatten(1).std(dim=1)
    assert per_channel.tolist() == pytest.approx([0.5 * s for s in STD], rel=0.03)


def test_gaussian_aug_trains_the_student_alone_on_noised_inputs():
    m = method("gaussian_aug", sigma=0.1, noise_space="pixel")
    assert m.teacher is None
    student_in = record_inputs(m.student)
    images = torch.rand(32, 3, 16, 16)
    m.training_step(images, torch.arange(32) % 10)
    assert (student_in[0] - images).std().item() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("placement", ["classifier", "stages"])
def test_fickle_teacher_outputs_differ_between_passes_and_plain_kd_does_not(placement):
    images = torch.rand(16, 3, 16, 16)
    ft = method("fickle_teacher", dropout=0.4, placement=placement,
                teacher_trained_with_dropout=False)
    running_mean = ft.teacher.net.stem[1].running_mean.clone()
    assert not torch.equal(ft.teacher_logits(images), ft.teacher_logits(images))
    assert torch.equal(ft.teacher.net.stem[1].running_mean, running_mean)  # BN stays frozen
    assert torch.equal(ft.teacher(images), ft.teacher(images))  # evaluation stays deterministic
    kd = method("kd")
    assert torch.equal(kd.teacher_logits(images), kd.teacher_logits(images))


def test_fickle_teacher_with_zero_dropout_is_plain_kd():
    images = torch.rand(8, 3, 16, 16)
    ft = method("fickle_teacher", dropout=0.0, placement="stages",
                teacher_trained_with_dropout=False)
    assert torch.equal(ft.teacher_logits(images), method("kd").teacher_logits(images))


def test_messy_collaboration_changes_the_configured_share_of_labels_to_other_classes():
    torch.manual_seed(1)
    labels = torch.arange(100_000) % 10
    for rate in (0.2, 0.5):
        noisy = flip_labels(labels, rate, 10)
        changed = noisy != labels
        assert changed.float().mean().item() == pytest.approx(rate, abs=0.01)  # each flip changes
        assert changed[:10_000].float().mean().item() == pytest.approx(rate, abs=0.02)  # anywhere
        new = noisy[changed & (labels == 3)]
        counts = torch.bincount(new, minlength=10)
        assert counts[3] == 0 and (counts[[0, 1, 2, 4, 5, 6, 7, 8, 9]] > 0.08 * len(new)).all()


def test_messy_collaboration_uses_the_corrupted_labels_in_its_cross_entropy():
    m = method("messy_collaboration", label_noise=1.0)
    images, labels = torch.rand(64, 3, 16, 16), torch.zeros(64, dtype=torch.long)
    torch.manual_seed(5)
    out = m.training_step(images, labels)
    torch.manual_seed(5)
    drawn = flip_labels(labels, 1.0, 10)
    ce = torch.nn.functional.cross_entropy(out["logits"].float(), drawn)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-5)


def test_teacher_output_corruption_shuffles_the_configured_share_of_rows():
    torch.manual_seed(2)
    logits = torch.randn(5000, 10)
    shuffled = shuffle_outputs(logits, 0.4)
    changed = (shuffled != logits).any(dim=1)
    assert changed.float().mean().item() == pytest.approx(0.4, abs=0.02)
    assert torch.equal(shuffled.sort(dim=1).values, logits.sort(dim=1).values)
    m = method("kd", shuffle=1.0)
    images = torch.rand(8, 3, 16, 16)
    assert not torch.equal(m.teacher_logits(images), m.teacher(images))


@pytest.mark.parametrize("name", ["soft_randomization", "fickle_teacher", "messy_collaboration",
                                  "gaussian_aug"])
def test_a_seeded_run_repeats_exactly(tmp_path, name):
    overrides = (f"method={name}", "sigma=0.1", "teacher.output_shuffle=0.2")
    a = train(compose_config(*overrides), tmp_path / "a")
    b = train(compose_config(*overrides), tmp_path / "b")
    assert (a["test/acc"], a["train/loss"]) == (b["test/acc"], b["train/loss"])


PRESETS = ["arani_baselines", "arani_sigma", "arani_fickle", "arani_messy", "arani_corruption"]


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_sweep_valid_values_in_the_paper_setting(preset):
    from hydra import compose, initialize_config_module

    from kdrun.validate import validate

    with initialize_config_module("kdrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert "seed" in params and len(params) >= 2
        for key, values in params.items():
            for value in str(values).split(","):
                job = compose("config", overrides=[f"experiment={preset}", f"{key}={value}"])
                validate(job)
                assert (job.teacher.arch, job.student.arch, job.dataset.name) == (
                    "wrn_40_2", "wrn_16_2", "cifar10")
                assert (job.alpha, job.T, job.epochs) == (0.9, 4.0, 200)


def test_a_noise_method_named_without_sigma_gets_noise_and_sigma_0_stays_a_control(tmp_path):
    from kdrun.methods import method_settings

    for name in ("soft_randomization", "gaussian_aug"):
        assert method_settings(compose_config(f"method={name}").method).sigma == 0.2
        assert method_settings(compose_config(f"method={name}", "sigma=0").method).sigma == 0
        assert method_settings(compose_config(f"method={name}", "sigma=0.05").method).sigma == 0.05
    results = train(compose_config("method=soft_randomization", "trainer.max_steps=1"), tmp_path)
    assert results["method/sigma"] == 0.2 and results["method/noise_space"] == "pixel"


def test_config_yaml_records_the_sigma_a_noise_method_filled_in(tmp_path):
    """What ran is what config.yaml says: `kdrun method=soft_randomization` trains with 0.2."""
    cfg = compose_config("method=soft_randomization", "trainer.max_steps=1")
    train(cfg, tmp_path)
    written = OmegaConf.load(tmp_path / "config.yaml")
    assert written.sigma == 0.2 and written.method.sigma == 0.2
    control = tmp_path / "control"
    train(compose_config("method=soft_randomization", "sigma=0", "trainer.max_steps=1"), control)
    assert OmegaConf.load(control / "config.yaml").method.sigma == 0


def test_fickle_teachers_teacher_can_be_trained_with_its_dropout_and_is_cached_apart(tmp_path):
    """Issue 30, item 7: both teachers offered; the dropout-trained one has its own cache
    entry, and config.yaml says which was used."""
    sources = {}
    for trained_with in (False, True):
        run = tmp_path / str(trained_with)
        results = train(compose_config("method=fickle_teacher", "trainer.max_steps=1",
                                       f"method.teacher_trained_with_dropout={trained_with}"),
                        run)
        assert OmegaConf.load(run / "config.yaml").teacher.drop_rate == (0.4 if trained_with
                                                                         else 0.0)
        sources[trained_with] = results["meta/teacher_source"]
    assert sources[True] != sources[False]
    teacher = torch.load(sources[True], weights_only=False)
    assert teacher["meta"]["recipe"]["drop_rate"] == 0.4
    from kdrun.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^teacher.drop_rate=0.2 contradicts method "):
        train(compose_config("method=fickle_teacher", "teacher.drop_rate=0.2",
                             "method.teacher_trained_with_dropout=true"), tmp_path / "both")


def test_a_teacher_loaded_from_a_file_cannot_be_trained_with_fickle_teachers_dropout(tmp_path):
    from kdrun.errors import ConfigError

    weights = tmp_path / "teacher.pt"
    weights.write_bytes(b"")  # never read: the error comes first
    with pytest.raises(ConfigError, match=r"teacher.checkpoint=.*teacher.pt loads one trained "):
        train(compose_config("method=fickle_teacher", f"teacher.checkpoint={weights}",
                             "method.teacher_trained_with_dropout=true"), tmp_path / "run")
