"""The training step: on-device epoch sums, capturable optimisers whose learning rate lives in a
device tensor, which methods can be captured, one memory format for compiled networks, and -
on a CUDA machine only - the step captured as a CUDA graph against the eager one."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.jobs import train
from kdrun.methods.base import Schedule, share_teacher_outputs
from kdrun.models.prepare import prepare
from kdrun.training.optimizers import Optimizers
from kdrun.training.schedule import lr_factor
from kdrun.training.step import EpochSums, Learner, Stepper, why_not_captured

from conftest import compose_config, cuda_only, make_run
from test_methods import make_method, make_optimizers

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9,
       "weight_decay": 5e-4}
COSINE = {"name": "cosine", "milestones": [], "gamma": 1.0, "warmup_epochs": 1, "min_lr": 0.0}


def cosine_optimizers(method, optim=SGD) -> Optimizers:
    return Optimizers(method, OmegaConf.create(optim), OmegaConf.create(COSINE),
                      Schedule(steps=20, steps_per_epoch=4))


def batch(seed: int, device="cpu", n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g).to(device),
            torch.randint(0, 4, (n,), generator=g).to(device))


def test_epoch_sums_weigh_each_term_by_its_images_and_reset_in_place():
    sums = EpochSums(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    sums.add({"loss": torch.tensor(1.0), "logits": logits}, torch.tensor([0, 1, 1]))
    sums.count({"loss": 0, "logits": 0}, 3)
    sums.add({"loss": torch.tensor(4.0), "logits": logits[:1], "kl": torch.tensor(2.0)},
             torch.tensor([0]))
    sums.count({"loss": 0, "logits": 0, "kl": 0}, 1)
    total = sums.totals["loss"]
    assert total.item() == 7.0 and sums.totals["kl"].item() == 2.0
    assert sums.correct.item() == 3 and sums.seen == 4
    assert sums.counts == {"loss": 4, "kl": 1}
    sums.reset()
    assert sums.totals["loss"] is total and total.item() == 0  # a graph keeps adding to it
    assert sums.correct.item() == 0 and sums.counts == {} and sums.seen == 0


def test_a_capturable_optimiser_reads_its_scheduled_rate_from_one_tensor_and_steps_alike():
    eager, fused = make_method("vanilla"), make_method("vanilla")
    eager_opt, fused_opt = cosine_optimizers(eager), cosine_optimizers(fused)
    fused_opt.make_capturable(torch.device("cpu"))
    rate = fused_opt.optimizers["main"].param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor)
    for step in range(6):
        images, labels = batch(step)
        for method, opt in ((eager, eager_opt), (fused, fused_opt)):
            opt.step(method.training_step(images, labels))
        expected = 0.1 * lr_factor(step + 1, OmegaConf.create(COSINE), 20, 4, 0.0)
        assert fused_opt.optimizers["main"].param_groups[0]["lr"] is rate  # filled, not replaced
        assert rate.item() == pytest.approx(expected) and fused_opt.lr == pytest.approx(expected)
    for a, b in zip(eager.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoints_hold_plain_rates_and_resume_eagerly_or_captured():
    method = make_method("vanilla")
    opt = cosine_optimizers(method)
    opt.make_capturable(torch.device("cpu"))
    for step in range(3):
        opt.step(method.training_step(*batch(step)))
    state = opt.state_dict()
    group = state["main"]["optimizer"]["param_groups"][0]
    assert type(group["lr"]) is float and "fused" not in group
    eager = cosine_optimizers(method)
    eager.load_state_dict(copy.deepcopy(state))
    assert eager.lr == pytest.approx(group["lr"])
    assert not isinstance(eager.optimizers["main"].param_groups[0]["lr"], torch.Tensor)
    captured = cosine_optimizers(method)
    captured.make_capturable(torch.device("cpu"))
    captured.load_state_dict(copy.deepcopy(state))
    rate = captured.optimizers["main"].param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor) and rate.item() == pytest.approx(group["lr"])
    assert captured.optimizers["main"].param_groups[0]["fused"]


def test_methods_that_cannot_be_captured_say_why():
    run = make_run()
    assert why_not_captured(make_method("kd"), make_optimizers(make_method("kd")), run) is None
    ragged = make_method("kd")
    ragged.uncapturable = lambda: "its step keeps only the images it gets right"
    assert why_not_captured(ragged, make_optimizers(ragged), run) == (
        "its step keeps only the images it gets right")
    rmsprop = {"_target_": "torch.optim.RMSprop", "_partial_": True, "lr": 0.01}
    kd = make_method("kd")
    assert "RMSprop has no fused CUDA step" in why_not_captured(
        kd, cosine_optimizers(kd, rmsprop), run)


def test_each_form_of_a_step_gets_its_own_replay_and_host_counters_move_every_step():
    method = make_method("afd", disc_every=3).train()
    sums = EpochSums(torch.device("cpu"))
    step = Stepper([Learner(method, make_optimizers(method), sums)], make_run(), capture=False)
    updated = ["loss/disc" in step(*batch(i))[0] for i in range(7)]
    assert updated == [True, False, False, True, False, False, True]
    assert method.steps == 7  # counted on the host, so also under replays (and checkpointed)
    assert {variants for _, variants in step.replays} == {
        (None,), ("with the discriminators' update",)}
    assert sums.counts["loss/disc"] == 3 * 8 and sums.counts["loss"] == 7 * 8


def test_noisy_students_noised_rounds_are_captured_only_with_device_noise():
    method = make_method("noisy_student")
    method.noisy, method.in_memory = True, True
    assert method.uncapturable() is None  # RandAugment batched on the device
    method.in_memory = False  # the DataLoader's workers noise each image: nothing in the step
    assert method.uncapturable() is None


def test_a_compiled_network_sees_one_memory_format_whatever_layout_it_is_given():
    import torch._dynamo

    method = make_method("vanilla")
    prepare(method, make_run().replace(memory_format=torch.channels_last))
    model = method.student.eval()
    model.net.compile(backend="eager")  # dynamo's guards without a C++ compiler
    torch._dynamo.reset()
    images = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        model(images.contiguous(memory_format=torch.channels_last))
        with torch._dynamo.config.patch(error_on_recompile=True):
            model(images)  # an evaluation's or an attack's plain layout: no recompile
    model.net._compiled_call_impl = None
    torch._dynamo.reset()


def test_a_compiled_model_compiles_the_feature_paths_methods_call_and_keeps_its_keys():
    import copy

    import torch._dynamo
    from torch._dynamo.utils import counters

    from kdrun.models import build_model

    model = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3).eval()
    keys = list(model.state_dict())
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        plain = model.forward_intermediates(images, [1]), model.forward_embedding(images)
    torch._dynamo.reset()
    counters.clear()
    model.compile_network(backend="eager")  # dynamo's graphs without a C++ compiler
    with torch.no_grad():
        compiled = model.forward_intermediates(images, [1]), model.forward_embedding(images)
        assert counters["stats"]["unique_graphs"] == 2  # both paths went through dynamo
        with torch._dynamo.config.patch(error_on_recompile=True):
            model.forward_intermediates(images, [1]), model.forward_embedding(images)
    assert torch.allclose(compiled[0][1][0], plain[0][1][0], atol=1e-6)
    assert torch.allclose(compiled[1][1], plain[1][1], atol=1e-6)
    assert list(model.state_dict()) == keys
    twin = copy.deepcopy(model)  # a copy runs its own weights through the compiled paths
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        assert torch.allclose(twin.forward_embedding(images)[0], twin(images), atol=1e-6)
    torch._dynamo.reset()


# ---- on a CUDA device only ----------------------------------------------------------------

def cuda_run(*overrides):
    return make_run("trainer.device=cuda", *overrides).replace(cuda_graph=True, compile=False)


ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.05}


class OneRun:
    """A Stepper of one learner, called as a lone run's step."""

    def __init__(self, method, optimizers: Optimizers, run, capture: bool):
        self.method, self.optimizers, self.sums = method, optimizers, EpochSums(run.device)
        self.stepper = Stepper([Learner(method, optimizers, self.sums)], run, capture)
        self.replays = self.stepper.replays

    @property
    def captured(self) -> bool:
        return self.stepper.captured

    def __call__(self, images, labels):
        return self.stepper(images, labels)[0]


def stepper(method, run, capture: bool, optim=SGD) -> OneRun:
    prepare(method, run)
    method.train()
    return OneRun(method, cosine_optimizers(method, optim), run, capture)


@cuda_only
@pytest.mark.parametrize("optim", [SGD, ADAMW], ids=["sgd", "adamw"])
def test_a_few_graph_steps_give_the_eager_losses(optim):
    run = cuda_run()
    eager, graph = stepper(make_method("vanilla"), run, False, optim), stepper(
        make_method("vanilla"), run, True, optim)
    for step in range(7):
        images, labels = batch(step, "cuda")
        losses = [s(images, labels)["loss"].item() for s in (eager, graph)]
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5), step
    assert graph.captured and not eager.captured
    # both fused: with torch's multi-tensor AdamW eagerly, Adam's normalised update had turned
    # the two kernels' rounding into weights 2e-4 apart within 7 steps (on an H200)
    assert all(group["fused"] for s in (eager, graph)
               for opt in s.optimizers.optimizers.values() for group in opt.param_groups)
    assert graph.optimizers.lr == pytest.approx(eager.optimizers.lr)  # the schedule moved on
    for a, b in zip(eager.method.parameters(), graph.method.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert graph.sums.totals["loss"].item() == pytest.approx(
        eager.sums.totals["loss"].item(), rel=1e-4)


@cuda_only
def test_both_forms_of_afds_step_are_captured_and_give_the_eager_losses():
    run = cuda_run()
    steppers = [stepper(make_method("afd", disc_every=2), run, capture)
                for capture in (False, True)]
    for step in range(12):
        images, labels = batch(step, "cuda")
        outs = [s(images, labels) for s in steppers]
        assert outs[1]["loss"].item() == pytest.approx(outs[0]["loss"].item(), rel=1e-4,
                                                       abs=1e-5), step
        assert ("loss/disc" in outs[1]) == ("loss/disc" in outs[0]) == (step % 2 == 0)
    assert [r.captured for r in steppers[1].replays.values()] == [True, True]
    assert steppers[1].method.steps == 12


@cuda_only
def test_every_replay_draws_fresh_noise():
    run = cuda_run()
    graph = stepper(make_method("soft_randomization", sigma=0.5), run, True)
    images, labels = batch(0, "cuda")
    for _ in range(5):
        graph(images, labels)
    assert graph.captured
    # with the weights fixed (lr 0 from here on), the same batch gives a different loss on
    # every replay only if each replay draws its own input noise
    for group in graph.optimizers.optimizers["main"].param_groups:
        group["lr"].fill_(0.0)
    graph.optimizers.schedulers = {}
    losses = {graph(images, labels)["loss"].item() for _ in range(3)}
    assert len(losses) == 3


@cuda_only
def test_a_seeded_graph_run_repeats(tmp_path):
    overrides = ("method=soft_randomization", "trainer.device=cuda", "trainer.compile=false",
                 "epochs=2")
    first = train(compose_config(*overrides, "trainer.cuda_graph=true"), tmp_path / "a")
    again = train(compose_config(*overrides, "trainer.cuda_graph=true"), tmp_path / "b")
    assert first["test/acc"] == again["test/acc"] and first["train/loss"] == again["train/loss"]
    assert first["train/captured"] and first["meta/cuda_graph"]


def test_a_cpu_run_records_that_its_step_ran_eagerly(tmp_path):
    results = train(compose_config("method=kd"), tmp_path)
    assert results["meta/cuda_graph"] is False and results["train/captured"] is False


def pack_stepper(run, capture: bool, alphas=(0.5, 0.9)) -> Stepper:
    """A pack of KD students on one teacher, stepped as a packed sweep steps them."""
    methods = [make_method("kd", alpha=alpha) for alpha in alphas]
    for method in methods[1:]:
        method.teacher = methods[0].teacher
    share_teacher_outputs(methods)
    for method in methods:
        prepare(method, run).train()
    return Stepper([Learner(m, cosine_optimizers(m), EpochSums(run.device)) for m in methods],
                   run, capture)


def test_a_pack_runs_its_teacher_once_per_batch_for_all_its_members():
    step = pack_stepper(make_run(), capture=False, alphas=(0.1, 0.5, 0.9))
    forwards = []
    step.learners[0].method.teacher.register_forward_hook(lambda *_: forwards.append(1))
    for i in range(2):
        outs = step(*batch(i))
        assert len({out["loss"].item() for out in outs}) == 3  # three students, three losses
    assert len(forwards) == 2


@cuda_only
def test_a_captured_pack_steps_each_member_as_the_eager_pack_does():
    """One graph holds the teacher's forward once and every member's step."""
    run = cuda_run()
    eager, graph = pack_stepper(run, False), pack_stepper(run, True)
    for step in range(7):
        images, labels = batch(step, "cuda")
        losses = [[out["loss"].item() for out in s(images, labels)] for s in (eager, graph)]
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5), step
    assert graph.captured and not eager.captured
    assert len(graph.replays) == 1  # the pack's step: one graph for both members
