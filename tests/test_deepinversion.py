"""Data-free distillation: each part of the synthesis loss, one synthesis step, the pool file,
and both stages through the real CLI."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
import torch
from torch import nn

from kdrun.data import TensorSplit, make_loader
from kdrun.data.pool import load_pool, save_pool
from kdrun.methods.inversion import (
    BatchNormStatistics,
    Competition,
    SynthesisSettings,
    Synthesizer,
    balanced_labels,
    competition,
    jensen_shannon,
    jittered,
    total_variation,
)
from kdrun.models import build_model

from conftest import TINY, compose_config, cuda_only, make_run, read_results

SETTINGS = SynthesisSettings(name="deepinversion", pool_size=8, batch_size=8, iterations=1,
                             lr=0.05, bn_weight=10.0, first_bn_weight=1.0, tv_weight=2.5e-5,
                             l2_weight=1e-4, jitter=0, flip=False, multi_resolution=False,
                             clamp=False, pool_dtype="uint8")


def test_bn_statistics_loss_is_zero_at_the_running_statistics_and_falls_when_optimised():
    x = torch.randn(16, 3, 8, 8) * 2 + 1
    layer = nn.BatchNorm2d(3).eval()
    layer.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    layer.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    bn = BatchNormStatistics(nn.Sequential(layer))
    layer(x)
    assert bn.loss().item() == pytest.approx(0, abs=1e-5)
    start = torch.randn(16, 3, 8, 8, requires_grad=True)
    optimizer = torch.optim.Adam([start], lr=0.1)
    losses = []
    for _ in range(20):
        layer(start)
        loss = bn.loss()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    bn.remove()
    layer(x)
    assert bn.terms == []  # no hook left behind


def test_the_first_bn_layer_gets_its_own_weight():
    net = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3)).eval()
    x = torch.randn(4, 3, 5, 5) + 3
    plain, weighted = BatchNormStatistics(net, 1.0), BatchNormStatistics(net, 10.0)
    net(x)
    first, second = weighted.terms
    assert weighted.loss().item() == pytest.approx((10 * first + second).item(), rel=1e-6)
    assert plain.loss().item() == pytest.approx((first + second).item(), rel=1e-6)


def test_priors_are_zero_for_a_flat_image_and_larger_for_rougher_ones():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert total_variation(flat).item() == 0
    noise = torch.randn(2, 3, 8, 8)
    smooth = nn.functional.avg_pool2d(noise, 3, stride=1, padding=1)
    assert total_variation(noise) > total_variation(smooth) > 0


def test_one_synthesis_step_lowers_the_total_loss():
    torch.manual_seed(0)
    teacher = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    synthesizer = Synthesizer(teacher, SETTINGS, make_run())
    labels = torch.arange(8) % 4
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    bn = BatchNormStatistics(teacher.net)
    optimizer = torch.optim.Adam([x], lr=0.05)
    before = synthesizer.losses(x, labels, bn, None)
    assert set(before) == {"ce", "bn", "tv", "l2", "loss"}
    before["loss"].backward()
    optimizer.step()
    after = synthesizer.losses(x, labels, bn, None)
    assert after["loss"] < before["loss"]


def test_competition_rewards_disagreement_with_the_student():
    agree = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    assert jensen_shannon(agree, agree, 3.0).item() == pytest.approx(0, abs=1e-7)
    assert competition(agree, agree, 3.0).item() == pytest.approx(1.0)
    mild, strong = agree.roll(1, dims=1) * 0.3, agree.roll(1, dims=1) * 3
    js_mild, js_strong = jensen_shannon(agree, mild, 3.0), jensen_shannon(agree, strong, 3.0)
    assert 0 < js_mild < js_strong <= torch.log(torch.tensor(2.0))
    assert competition(agree, strong, 3.0) < competition(agree, mild, 3.0) < 1


def test_nvlabs_competition_is_their_clamped_kl_from_the_mean_on_fixed_tensors():
    """NVlabs' code (deepinversion.py, cifar10/deepinversion_cifar10.py), written out as they
    write it: P (student), Q (teacher) and M clamped after M is formed, KLDivLoss(log P, M)."""
    from kdrun.methods.inversion import nvlabs_jensen_shannon

    teacher = torch.tensor([[4.0, 0.0, -2.0], [0.5, 1.0, 0.0], [9.0, -9.0, 0.0]])
    student = torch.tensor([[-1.0, 3.0, 0.0], [0.5, 1.0, 0.2], [0.0, 0.0, 0.0]])
    T = 3.0
    P, Q = torch.softmax(student / T, dim=1), torch.softmax(teacher / T, dim=1)
    M = 0.5 * (P + Q)
    P, Q, M = P.clamp(0.01, 0.99), Q.clamp(0.01, 0.99), M.clamp(0.01, 0.99)
    kl = nn.KLDivLoss(reduction="batchmean")
    theirs = 0.5 * kl(torch.log(P), M) + 0.5 * kl(torch.log(Q), M)
    assert nvlabs_jensen_shannon(teacher, student, T).item() == pytest.approx(theirs.item())
    assert competition(teacher, student, T, "nvlabs").item() == pytest.approx(
        1 - theirs.clamp(0, 1).item())
    assert competition(teacher, student, T, "js") != competition(teacher, student, T, "nvlabs")


def test_the_data_free_methods_distil_by_kl_alone_and_adi_weighs_competition_as_the_paper():
    """The paper's distillation loss is the KL to the teacher (alpha 1, no cross-entropy to the
    synthesis labels); NVlabs' README: competition weight 0.2 was used in the paper."""
    from kdrun.methods import method_settings

    for name in ("deepinversion", "adaptive_deepinversion", "deepdream"):
        assert method_settings(compose_config(f"method={name}").method).alpha == 1.0, name
    adi = method_settings(compose_config("method=adaptive_deepinversion").method)
    assert (adi.competition_weight, adi.competition_T, adi.competition_form) == (0.2, 3.0, "js")


def test_targets_are_balanced_over_classes():
    labels = balanced_labels(103, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103


def test_a_synthesised_batch_is_uint8_images_at_the_asked_size_and_multi_resolution_too():
    teacher = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    g = torch.Generator().manual_seed(0)
    for multi in (False, True):
        settings = dataclasses.replace(SETTINGS, iterations=2, multi_resolution=multi, jitter=1,
                                       flip=True)
        images = Synthesizer(teacher, settings, make_run()).batch(
            torch.arange(4), 16, g)
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)


def test_multi_resolution_pools_the_full_size_images_first_as_nvlabs_imagenet_code():
    teacher = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    seen = []
    teacher.net.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].shape[-1]))
    settings = dataclasses.replace(SETTINGS, iterations=4, multi_resolution=True, jitter=2)
    x = Synthesizer(teacher, settings, make_run()).optimise(
        torch.arange(4), 16, torch.Generator().manual_seed(0))
    assert seen == [8, 8, 16, 16] and x.shape[-1] == 16


def test_the_l2_prior_is_each_images_unsquared_norm_averaged_on_fixed_tensors():
    from kdrun.methods.inversion import l2_prior

    x = torch.zeros(2, 3, 2, 2)
    x[0, 0, 0, 0], x[0, 1, 1, 1] = 3.0, 4.0  # norm 5
    x[1] = 1.0  # norm sqrt(12)
    assert l2_prior(x).item() == pytest.approx((5 + 12 ** 0.5) / 2)


def test_images_move_freely_while_optimised_unless_clamped_every_step():
    torch.manual_seed(0)
    teacher = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    reach = {}
    for clamp in (False, True):
        settings = dataclasses.replace(SETTINGS, iterations=5, lr=1.0, clamp=clamp)
        x = Synthesizer(teacher, settings, make_run()).optimise(
            torch.arange(8) % 4, 16, torch.Generator().manual_seed(0))
        reach[clamp] = ((x < low) | (x > high)).float().mean().item()
    assert reach[False] > 0.05  # NVlabs' CIFAR-10 loop: no clamp while optimising
    assert reach[True] == 0  # the clamped loop stays inside [0, 1] in pixels
    assert make_run("method=deepinversion").cfg.method.clamp is False


def test_a_float_pool_is_the_optimised_pixels_as_they_are_and_uint8_their_quantised_clamp():
    """NVlabs' CIFAR-10 code distils from the float images it optimised, values outside
    [0, 1] included; a uint8 pool is those pixels clamped and rounded once."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    labels = torch.arange(8) % 4
    settings = dataclasses.replace(SETTINGS, iterations=5, lr=1.0)
    optimised = Synthesizer(teacher, settings, make_run()).optimise(
        labels, 16, torch.Generator().manual_seed(0))
    pixels = optimised * 0.25 + 0.5  # the teacher's std and mean
    pools = {dtype: Synthesizer(teacher, dataclasses.replace(settings, pool_dtype=dtype),
                                make_run()).batch(labels, 16, torch.Generator().manual_seed(0))
             for dtype in ("float32", "uint8")}
    assert pools["float32"].dtype == torch.float32
    torch.testing.assert_close(pools["float32"], pixels)
    assert ((pixels < 0) | (pixels > 1)).any()  # kept, not clamped away
    assert torch.equal(pools["uint8"], (pixels.clamp(0, 1) * 255).round().to(torch.uint8))
    assert make_run("method=deepinversion").cfg.method.pool_dtype == "float32"


def test_training_batches_of_a_float_pool_are_its_pixels_unscaled():
    images = torch.randn(6, 3, 4, 4) * 0.7 + 0.5  # pixels, some beyond [0, 1]
    split = TensorSplit(images, torch.arange(6) % 2)
    run = make_run()
    for train in (False, True):
        batches = list(make_loader(split, 3, run, train=train, augment=False))
        seen = torch.cat([b for b, _ in batches])
        assert seen.dtype == torch.float32
        if not train:
            assert torch.equal(seen, images)  # not divided by 255 like uint8 pixels
        else:
            assert torch.equal(seen.sort(dim=0).values, images.sort(dim=0).values)
    assert torch.equal(images, split.images)  # the split itself untouched


def test_the_jitter_is_torchs_roll_then_flip_as_one_gather():
    x = torch.randn(2, 3, 5, 7)
    for dy in (-2, 0, 3):
        for dx in (-3, 1, 6):
            for flip in (0, 1):
                expected = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                expected = expected.flip(3) if flip else expected
                assert torch.equal(jittered(x, torch.tensor([dy, dx, flip])), expected)


def tiny_classifier():
    return build_model("resnet8", 4, [0.5] * 3, [0.25] * 3)


def test_batches_of_one_shape_share_one_loop_restarted_as_if_new():
    torch.manual_seed(0)
    teacher, student = tiny_classifier().eval(), tiny_classifier()
    settings = dataclasses.replace(SETTINGS, iterations=4, jitter=2, flip=True)
    synthesizer = Synthesizer(teacher, settings, make_run(), Competition(0.5, 3.0))
    first, second = (synthesizer.batch(torch.arange(8) % 4, 16,
                                       torch.Generator().manual_seed(5), student)
                     for _ in range(2))
    assert len(synthesizer.batches) == 1  # the second batch restarted the first's loop
    assert torch.equal(first, second)  # with fresh Adam moments and its draws from the first
    assert all(p.grad is None for p in student.parameters())  # images optimised, not weights


@cuda_only
def test_a_captured_synthesis_gives_the_eager_images():
    torch.manual_seed(0)
    teacher, student = tiny_classifier().cuda().eval(), tiny_classifier().cuda()
    settings = dataclasses.replace(SETTINGS, iterations=8, jitter=2, flip=True, clamp=True)
    labels = (torch.arange(8) % 4).cuda()
    images, captured = {}, {}
    for graph in (False, True):
        run = make_run("trainer.device=cuda").replace(cuda_graph=graph, compile=False)
        synthesizer = Synthesizer(teacher, settings, run, Competition(0.5, 3.0))
        # the second batch is replayed from its first iteration on
        images[graph] = [synthesizer.optimise(labels, 16, torch.Generator().manual_seed(b),
                                              student) for b in range(2)]
        captured[graph] = (len(synthesizer.batches), synthesizer.captured)
    assert captured == {False: (1, False), True: (1, True)}
    for eager, replayed in zip(images[False], images[True]):
        # a replay that reused one jitter draw, or kept the last batch's Adam moments, would
        # move the images elsewhere
        torch.testing.assert_close(replayed, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("images", [torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8),
                                    torch.randn(10, 3, 8, 8) + 0.5], ids=["uint8", "float32"])
def test_the_pool_file_round_trips_with_a_png_grid(tmp_path, images):
    split = TensorSplit(images, torch.arange(10) % 2)
    grid = save_pool(tmp_path / "pool.pt", split, ["a", "b"], meta={"teacher": "resnet8"})
    pool, classes, meta = load_pool(tmp_path / "pool.pt")
    assert pool.images.dtype == images.dtype  # floats are not quantised on the way
    assert torch.equal(pool.images, split.images) and torch.equal(pool.labels, split.labels)
    assert classes == ["a", "b"] and meta == {"teacher": "resnet8"}
    assert grid.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_both_stages_run_through_the_cli(tmp_path, cli_env):
    tiny = [*TINY, "synthesis.pool_size=16", "synthesis.batch_size=8", "synthesis.iterations=3"]
    methods = ["deepinversion", "adaptive_deepinversion", "deepdream"]
    proc = subprocess.run(["kdrun", "-m", *tiny, f"method={','.join(methods)}",
                           "epochs=2",
                           f"hydra.sweep.dir={tmp_path}/sweep"], env=cli_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, method in enumerate(methods):
        run = tmp_path / "sweep" / str(job)
        results = read_results(run)
        assert results["synth/img_s"] > 0 and 0 <= results["synth/teacher_acc"] <= 100, method
        assert results["synth/captured"] is False  # on the CPU every iteration is eager
        assert 0 <= results["test/acc"] <= 100
        assert (run / "synthetic" / "pool.png").is_file(), method
        assert load_pool(run / "synthetic" / "pool.pt")[0].images.dtype == torch.float32
    assert (tmp_path / "sweep" / "1" / "synthetic" / "pool-round4.pt").is_file()  # ADI rounds
    assert "synthesis: batch 2/2 done" in proc.stdout + proc.stderr  # never silent for long

    teacher = next((tmp_path / "cache" / "teachers").glob("*/teacher.pt"))
    pool = tmp_path / "sweep" / "0" / "synthetic" / "pool.pt"
    stage2 = [o for o in TINY if not o.startswith("dataset=")]
    proc = subprocess.run(
        ["kdrun", *stage2, "method=kd", "dataset=synthetic_pool", f"dataset.path={pool}",
         "dataset.test_set=synthetic", "dataset.image_size=16", "dataset.num_classes=4",
         f"teacher.checkpoint={teacher}", f"hydra.run.dir={tmp_path}/stage2"],
        env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 <= read_results(tmp_path / "stage2")["test/acc"] <= 100


def test_adaptive_deepinversion_distils_as_long_as_deepinversion_on_one_schedule(tmp_path):
    """Issue 19, item 4: ADI's rounds go on with one optimiser and one lr schedule, as long as
    DeepInversion's (here 6 epochs of 6 batches = 36 steps), split equally between rounds."""
    from kdrun.jobs import train
    from kdrun.runtime import checkpoint

    from conftest import compose_config

    train(compose_config("method=adaptive_deepinversion", "method.rounds=3",
                         "synthesis.pool_size=48", "synthesis.batch_size=16",
                         "synthesis.iterations=1", "trainer.batch_size=8", "epochs=6",
                         "sched=cosine", "sched.min_lr=0"), tmp_path)
    steps, lrs = [], []
    for r in (1, 2, 3):
        state = checkpoint.load(tmp_path / "checkpoints" / f"last-round{r}.pt")
        main = state["optimizers"]["main"]
        steps.append(main["scheduler"]["last_epoch"])
        lrs.append(main["optimizer"]["param_groups"][0]["lr"])
        assert state["epoch"] == (6, 3, 2)[r - 1]  # pools of 16, 32, 48: 12 steps a round
    assert steps == [12, 24, 36]  # one schedule, counted on through the rounds
    base = compose_config("sched=cosine").optim.lr
    assert lrs == pytest.approx([0.75 * base, 0.25 * base, 0], abs=1e-6)  # cosine over 36


def test_a_pool_read_back_comes_in_the_runs_dtype(tmp_path):
    """A resumed run whose round file was saved as uint8 (before method.pool_dtype) and whose
    next round is float32 must not join uint8 levels to pixels."""
    from test_methods import make_method

    saved = TensorSplit(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(2).long())
    save_pool(tmp_path / "synthetic" / "pool-round1.pt", saved, ["a", "b"], meta={})
    method = make_method("adaptive_deepinversion")
    for dtype, expected in (("float32", torch.full((2, 3, 4, 4), 1.0)), ("uint8", saved.images)):
        method.settings.pool_dtype = dtype
        pool = method.synthesize(["a", "b"], 2, "pool-round1.pt", make_run(run_dir=tmp_path),
                                 student=None)
        assert torch.equal(pool.images, expected) and torch.equal(pool.labels, saved.labels)
