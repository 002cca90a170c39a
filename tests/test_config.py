"""Composition of the real config tree, and the validation that runs before any data is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException

import kdrun
from kdrun.errors import ConfigError
from kdrun.validate import validate

from conftest import compose_config

CONF = Path(kdrun.__file__).parent.parent / "conf"


def group_options() -> list[tuple[str, str]]:
    """Every option of every group: YAML files under conf/ plus the stored teacher/student ones."""
    options = [(p.parent.name, p.stem) for p in CONF.glob("*/*.yaml")
               if p.parent.name != "evaluation"]  # evaluations are keys of eval, not a group
    repo = ConfigStore.instance().repo
    options += [(g, name.removesuffix(".yaml")) for g in ("teacher", "student") for name in repo[g]]
    return sorted(options)


# options that need a setting no default can give, and the one line that asks for it
NEEDS_A_SETTING = {("dataset", "synthetic_pool"): "dataset.path=None is not allowed: give the "
                   "pool file of a data-free run",
                   # evaluation-only sets: a training set they cannot be
                   **{("dataset", name): f"dataset={name} is an out-of-distribution set only"
                      for name in ("places365", "textures", "tin")}}


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_of_every_group_composes_and_validates(group, option):
    cfg = compose_config(f"{group}={option}", tiny=False)
    if (group, option) in NEEDS_A_SETTING:
        with pytest.raises(ConfigError, match=NEEDS_A_SETTING[group, option]):
            validate(cfg)
        return
    validate(cfg)


def test_a_synthetic_pool_needs_the_teacher_that_made_it(tmp_path):
    pool = tmp_path / "pool.pt"
    pool.write_bytes(b"")
    cfg = compose_config("dataset=synthetic_pool", f"dataset.path={pool}", "method=kd",
                         tiny=False)
    with pytest.raises(ConfigError, match="teacher.checkpoint=auto would train a teacher on the "
                                          "synthetic pool: give the teacher that made it"):
        validate(cfg)
    validate(compose_config("dataset=synthetic_pool", f"dataset.path={pool}", "method=vanilla",
                            tiny=False))


def preset_jobs() -> list[tuple[str, list[str]]]:
    """Every job of every preset's sweep (`hydra.sweeper.params`), one seed each."""
    import itertools

    from omegaconf import OmegaConf

    jobs = []
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        params = OmegaConf.load(path).get("hydra", {}).get("sweeper", {}).get("params", {})
        grid = [[f"{key}={value}" for value in str(values).split(",")]
                for key, values in params.items()]
        grid = [options[:1] if options[0].startswith("seed=") else options for options in grid]
        jobs += [(path.stem, list(combo)) for combo in itertools.product(*grid)]
    return jobs


@pytest.mark.parametrize(("preset", "overrides"), preset_jobs())
def test_every_job_of_every_preset_sweep_composes_and_validates(preset, overrides):
    cfg = compose_config(f"experiment={preset}", *overrides, tiny=False)
    validate(cfg)
    for override in overrides:
        key, value = override.split("=")
        if key == "crd_pair":  # a pair of architectures, set where they live
            assert f"{cfg.teacher.arch}-{cfg.student.arch}" == value
            continue
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert str(node.name if key == "method" else node) == value


def test_defaults_are_the_noise_as_a_resource_setting():
    cfg = compose_config(tiny=False)
    assert (cfg.method.name, cfg.teacher.arch, cfg.student.arch, cfg.dataset.name) == (
        "kd", "wrn_40_2", "wrn_16_2", "cifar10")
    assert (cfg.epochs, cfg.alpha, cfg.T, cfg.optim.momentum) == (200, 0.9, 4.0, 0.9)
    assert cfg.optim._target_ == "torch.optim.SGD"


def test_method_reads_top_level_keys_by_interpolation():
    cfg = compose_config("alpha=0.3", "T=8")
    assert (cfg.method.alpha, cfg.method.T) == (0.3, 8.0)


def test_teacher_recipe_is_independent_of_student_sweeps():
    cfg = compose_config("optim.lr=0.05", "optim=adamw")
    assert cfg.teacher.optim._target_ == "torch.optim.SGD"
    assert cfg.teacher.optim.lr == 0.1


def test_quickstart_keeps_the_method_free():
    cfg = compose_config("experiment=quickstart", "method=vanilla", tiny=False)
    assert (cfg.dataset.name, cfg.method.name) == ("digits", "vanilla")


def test_the_quickstart_gives_a_method_the_settings_it_needs_there_and_the_command_line_wins():
    def quickstart(*overrides):
        cfg = compose_config("experiment=quickstart", *overrides, tiny=False)
        validate(cfg)
        return cfg

    for name in ("deepinversion", "adaptive_deepinversion", "deepdream"):
        cfg = quickstart(f"method={name}")
        assert (cfg.method.clamp, cfg.method.lr, cfg.method.iterations) == (True, 0.1, 100), name
        assert cfg.method.bn_weight == (0.0 if name == "deepdream" else 0.3), name
        assert cfg.method.pool_dtype == "uint8", name
    ns = quickstart("method=noisy_student")
    assert (ns.epochs, ns.method.rounds) == (90, 1)
    assert quickstart("method=kd").epochs == 15  # no settings of its own: the quickstart's
    assert quickstart("method=deepinversion", "method.bn_weight=10").method.bn_weight == 10
    assert quickstart("method=noisy_student", "epochs=5").epochs == 5
    plain = compose_config("method=deepinversion", tiny=False)  # outside the quickstart
    assert (plain.method.bn_weight, plain.method.iterations) == (10.0, 2000)


@pytest.mark.parametrize(("override", "message"), [
    ("alpha=1.5", "alpha=1.5 is not allowed: it must lie in [0, 1]"),
    ("alpha=-0.1", "alpha=-0.1 is not allowed"),
    ("T=0", "T=0.0 is not allowed: the temperature must be > 0"),
    ("sigma=-0.2", "sigma=-0.2 is not allowed"),
    ("epochs=0", "epochs=0 is not allowed"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is not allowed"),
    ("optim.lr=0", "optim.lr=0 is not allowed"),
    ("sched.milestones=[0.5,1.5]", "milestones are fractions"),
    ("student.drop_rate=1.0", "student.drop_rate=1.0 is not allowed"),
    ("dataset.test_fraction=1.0", "dataset.test_fraction=1.0 is not allowed"),
    ("method.name=kdd", "method.name=kdd is not a known method: choose one of "
                        "adaptive_deepinversion, afd, at, "),
    ("student.arch=wrn_99_9", "student.arch=wrn_99_9 is not a known architecture"),
    ("teacher.arch=timm/not_a_model", "teacher.arch=timm/not_a_model is not a timm model"),
    ("dataset.name=emnist", "dataset.name=emnist is not a known data set"),
    ("+method.beta=1", "method.beta is not a setting of method kd: its settings are T, alpha"),
    ("method.alpha=1.5", "method.alpha=1.5 is not allowed: it must lie in [0, 1]"),
    ("method.alpha=abc", "method.alpha=abc is not allowed: it must be of type float"),
    ("method.T=-1", "method.T=-1.0 is not allowed: the temperature must be > 0"),
    ("method=dml method.peers=abc",
     "method.peers=abc is not allowed: it must be of type list[str]"),
    ("method=afd method.disc_every=0", "method.disc_every=0 is not allowed"),
    ("method=deepinversion method.pool_size=0", "method.pool_size=0 is not allowed: use >= 1"),
    ("dataset.image_size=abc", "dataset.image_size=abc is not allowed: it must be of type int"),
    ("+dataset.fold=1", "dataset.fold is not a setting of data set synthetic: its settings are"),
    ("dataset.test_set=emnist", "dataset.test_set=emnist is not a known data set"),
    ("teacher.checkpoint=/no/such/file.pt", "teacher.checkpoint=/no/such/file.pt does not exist"),
    ("teacher.checkpoint=pretrained", "pretrained weights exist only for timm models"),
    ("trainer.device=tpu", "trainer.device=tpu is not allowed"),
    ("optim._target_=torch.optim.Nope", "is not an importable optimiser class"),
    ("teacher.output_shuffle=1.5", "teacher.output_shuffle=1.5 is not allowed"),
    ("teacher.label_noise=-0.1", "teacher.label_noise=-0.1 is not allowed"),
    ("eval=standard eval.attacks.pgd_linf.eps=[0,8]",
     "eval.attacks.pgd_linf.eps=[0.0, 8.0] is not allowed: budgets must be > 0"),
    ("eval=standard eval.attacks.pgd_l2.steps=0", "eval.attacks.pgd_l2.steps=0 is not allowed"),
    ("eval.subset=0", "eval.subset=0 is not allowed"),
    ("eval=standard eval.corruptions.names=[fog]",
     "eval.corruptions.names=fog is not allowed: choose from gaussian_noise"),
    ("eval=standard eval.corruptions.severities=[0,6]",
     "eval.corruptions.severities=[0, 6] is not allowed: severities are 1..5"),
    ("+eval.corruptions.released=[rain]", "eval.corruptions.released=rain is not allowed: the "
                                          "released files are gaussian_noise"),
    ("+eval.robustness={}", "eval.robustness is neither an evaluation (attacks, corruptions, ood, "
                            "shift) nor a setting of eval (calibration_bins, subset"),
    ("+eval.ood.scores=[msp,react]", "eval.ood.scores=react is not a known OOD score: choose one "
                                     "of energy, knn, mahalanobis, maxlogit, msp, odin, vim"),
    ("+eval.ood.settings.knn.k=0", "eval.ood.settings.knn.k=0 is not allowed: use >= 1"),
    ("+eval.ood.far.tin=null +eval.ood.near.tin=null",
     "eval.ood=['tin'] is not allowed: a set is either near or far, not both"),
    ("+eval.shift.sets.textures=null", "eval.shift.sets.textures: textures is an "
                                       "out-of-distribution set only: name it under eval.ood"),
    ("dataset=places365", "dataset=places365 is an out-of-distribution set only"),
    ("+eval.ood.far.nosuch=null", "eval.ood.far.nosuch=nosuch is not a known data set"),
    ("mode=eval", "checkpoint=None is not allowed: mode=eval needs checkpoint=PATH"),
    ("~method.T", "method kd needs method.T: add it to conf/method/kd.yaml"),
    ("method=soft_randomization method.noise_space=hsv",
     "method.noise_space=hsv is not allowed: choose one of pixel, normalized"),
    ("method=fickle_teacher method.dropout=1", "method.dropout=1.0 is not allowed"),
    ("method=fickle_teacher method.placement=head", "method.placement=head is not allowed"),
    ("method=messy_collaboration method.label_noise=2", "method.label_noise=2.0 is not allowed"),
    ("+foo=1", "foo is not a kdrun setting, so it would be ignored: remove it"),
    ("+trainer.batchsize=4", "trainer.batchsize is not a kdrun setting, so it would be ignored: "
                             "did you mean trainer.batch_size?"),
    ("eval=standard +eval.attacks.pgd_linf.stepz=3", "eval.attacks.pgd_linf.stepz is not a "
     "setting of evaluation attacks"),
    ("+batchsize=4", "did you mean teacher.batch_size or trainer.batch_size"),
    ("+teacher.optim.momentun=0.9", "teacher.optim.momentun=0.9 is not allowed: "
                                    "torch.optim.SGD takes no such argument"),
    ("method=noisy_student method.unlabel_ratio=0", "method.unlabel_ratio=0.0 is not allowed"),
    ("method=noisy_student method.label_smoothing=1", "method.label_smoothing=1.0 is not allowed"),
    ("method=noisy_student method.per_round=[{dropout:3},{},{}]",
     "method.per_round[0]: method.dropout=3.0 is not allowed"),
    ("method=noisy_student method.per_round=[{}]", "method.per_round=1 is not allowed"),
    ("method=noisy_student method.randaugment_ops=-1", "method.randaugment_ops=-1 is not allowed"),
    ("method=noisy_student method.weight_average=1", "method.weight_average=1.0 is not allowed"),
    ("method=deepinversion method.pool_dtype=float16", "method.pool_dtype=float16 is not allowed"),
    ("method=fickle_teacher method.teacher_trained_with_dropout=true method.placement=stages",
     "method.placement=stages is not allowed: a teacher is trained with dropout on its "
     "classifier's input only"),
    ("dataset.val_size=-1", "dataset.val_size=-1 is not allowed"),
    ("T=inf", "T=inf is not allowed: numbers must be finite"),
    ("optim.lr=nan", "optim.lr=nan is not allowed: numbers must be finite"),
    ("teacher.checkpoint=/", "teacher.checkpoint=/ is a directory, not a file"),
    ("mode=eval checkpoint=/", "checkpoint=/ is a directory, not a file"),
])
def test_impossible_values_name_key_value_and_what_is_allowed(override, message):
    cfg = compose_config(*override.split())
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["alpha=abc", "trainer.batchsize=3", "trainer.precision=fp16",
                                      "method=nope"])
def test_wrong_types_unknown_keys_and_options_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_config(override)


def test_an_eval_choice_on_the_command_line_beats_the_presets():
    """Issue 18, item 3: experiment=quickstart eval=clean skips the quickstart's attacks."""
    quick = compose_config("experiment=quickstart", tiny=False)
    assert quick.eval.subset == 200 and list(quick.eval.attacks.pgd_linf.eps) == [2, 8]
    clean = compose_config("experiment=quickstart", "eval=clean", tiny=False)
    assert clean.eval.attacks is None and clean.eval.corruptions is None
    assert "ood" not in clean.eval


def test_the_crd_table_pairs_carry_the_benchmarks_recipe_and_student_lr():
    """Every pair file is in the preset's sweep; MobileNetV2 and ShuffleNet students train at
    the benchmark's lr 0.01, the others at 0.05; 240 epochs, batch 64, x0.1 at 150/180/210;
    the teacher is the benchmark's published file."""
    pairs = sorted(p.stem for p in (Path(kdrun.__file__).parent.parent / "conf" / "crd_pair")
                   .glob("*.yaml"))
    assert len(pairs) == 13
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        swept = compose("config", overrides=["experiment=crd_cifar100"], return_hydra_config=True)
        assert sorted(swept.hydra.sweeper.params.crd_pair.split(",")) == pairs
        for pair in pairs:
            cfg = compose("config", overrides=["experiment=crd_cifar100", f"crd_pair={pair}"])
            teacher, student = pair.split("-")
            assert (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
            small = student.startswith(("mobilenet", "shufflenet"))
            assert cfg.optim.lr == (0.01 if small else 0.05) and cfg.teacher.optim.lr == 0.05
            assert (cfg.epochs, cfg.trainer.batch_size, cfg.dataset.name) == (240, 64, "cifar100")
            assert [round(m * 240) for m in cfg.sched.milestones] == [150, 180, 210]
            assert cfg.teacher.checkpoint.startswith("zoo:mdistiller/")  # the benchmark's file
            validate(cfg)  # ... which is a CIFAR-100 file of the pair's teacher architecture
