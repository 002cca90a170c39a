"""The config schema: types for every key, so Hydra rejects `alpha=abc` or a misspelt key at
composition time. Values live in the YAML under conf/ (the schema holds none), so the two can
never disagree. Ranges and names are checked by `validate`, before any data is touched."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from kdrun.errors import ConfigError
from kdrun.errors import require as _check


class Precision(Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Mode(Enum):
    train = "train"
    eval = "eval"


class SchedName(Enum):
    multistep = "multistep"
    cosine = "cosine"
    constant = "constant"


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    num_classes: int = MISSING
    image_size: int = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    crop_padding: int = MISSING
    hflip: bool = MISSING
    test_fraction: float = MISSING
    split_seed: int = MISSING
    train_subset: int | None = None
    test_subset: int | None = None
    samples: int = MISSING
    num_workers: int = MISSING
    path: str | None = None  # dataset=synthetic_pool: the pool file
    test_set: str | None = None  # dataset=synthetic_pool: the data set that tests


@dataclass
class SchedConfig:
    name: SchedName = MISSING
    milestones: list[float] = MISSING
    gamma: float = MISSING
    warmup_epochs: float = MISSING
    min_lr: float = MISSING


@dataclass
class ModelConfig:
    arch: str = MISSING
    drop_rate: float = MISSING


@dataclass
class TeacherConfig(ModelConfig):
    checkpoint: str = MISSING
    corruption: float = MISSING
    seed: int = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    cache_dir: str = MISSING
    optim: dict[str, Any] = field(default_factory=dict)
    sched: SchedConfig = field(default_factory=SchedConfig)


@dataclass
class TrainerConfig:
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool | None = None
    sync_bn: bool = MISSING
    max_steps: int | None = None
    resume: bool = MISSING
    eval_every: int = MISSING
    log_every: int = MISSING
    progress: bool = MISSING


@dataclass
class AttackConfig:
    eps: list[float] = MISSING
    step_size: float = MISSING
    steps: int = MISSING
    random_start: bool = MISSING


@dataclass
class FgsmConfig:
    eps: list[float] = MISSING


@dataclass
class EvalConfig:
    calibration_bins: int = MISSING
    subset: int | None = None
    batch_size: int = MISSING
    plots: bool = MISSING
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)
    shift: dict[str, str | None] = field(default_factory=dict)
    ood: dict[str, str | None] = field(default_factory=dict)
    pgd_linf: AttackConfig = field(default_factory=AttackConfig)
    pgd_l2: AttackConfig = field(default_factory=AttackConfig)
    fgsm: FgsmConfig = field(default_factory=FgsmConfig)


@dataclass
class LoggerConfig:
    name: str = MISSING
    project: str = MISSING
    entity: str | None = None
    mode: str = MISSING
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class SynthesisConfig:
    pool_size: int = MISSING
    batch_size: int = MISSING
    iterations: int = MISSING


@dataclass
class KdrunConfig:
    alpha: float = MISSING
    T: float = MISSING
    sigma: float = MISSING
    seed: int = MISSING
    epochs: int = MISSING
    mode: Mode = MISSING
    checkpoint: str | None = None
    cache_dir: str = MISSING
    objective: str = MISSING
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)


def register_configs() -> None:
    """The schema, plus one `teacher=`/`student=` option per architecture in the model zoo."""
    from kdrun.models import MODELS

    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=KdrunConfig)
    for arch in MODELS.names():
        cs.store(group="teacher", name=arch, node={"arch": arch})
        cs.store(group="student", name=arch, node={"arch": arch})


def validate(cfg: DictConfig) -> None:
    """Reject impossible values and unknown names with a message naming key, value and fix."""
    from kdrun.data import DATASETS
    from kdrun.methods import METHODS
    from kdrun.models import check_arch

    _check(0.0 <= cfg.alpha <= 1.0, "alpha", cfg.alpha, "it must lie in [0, 1]")
    _check(cfg.T > 0, "T", cfg.T, "the temperature must be > 0")
    _check(cfg.sigma >= 0, "sigma", cfg.sigma, "the noise std must be >= 0")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "train for at least 1 epoch")
    _check(cfg.seed >= 0, "seed", cfg.seed, "seeds are integers >= 0")
    _check(cfg.trainer.batch_size >= 1, "trainer.batch_size", cfg.trainer.batch_size, "use >= 1")
    _check(cfg.trainer.eval_every >= 0, "trainer.eval_every", cfg.trainer.eval_every,
           "epochs between test evaluations, >= 0 (0: only at the end)")
    if cfg.trainer.max_steps is not None:
        _check(cfg.trainer.max_steps >= 1, "trainer.max_steps", cfg.trainer.max_steps,
               "use >= 1, or null for no limit")
    _check_device(cfg.trainer.device)
    _check_distributed(cfg)
    _check_eval(cfg.eval)
    if choice(cfg.mode) == "eval":
        _check(cfg.checkpoint is not None and Path(cfg.checkpoint).expanduser().is_file(),
               "checkpoint", cfg.checkpoint, "mode=eval needs checkpoint=PATH of a model file "
               "(e.g. <run dir>/checkpoints/student.pt)")

    DATASETS.get(cfg.dataset.name, key="dataset.name")
    if cfg.dataset.name == "synthetic_pool":
        _check_synthetic_pool(cfg)
    _check(cfg.dataset.num_classes >= 2, "dataset.num_classes", cfg.dataset.num_classes, "use >= 2")
    _check(0 < cfg.dataset.test_fraction < 1, "dataset.test_fraction", cfg.dataset.test_fraction,
           "it must lie in (0, 1)")
    for key in ("train_subset", "test_subset"):
        value = cfg.dataset[key]
        if value is not None:
            _check(value >= 1, f"dataset.{key}", value, "use >= 1, or null for the whole split")

    check_arch(cfg.student.arch, key="student.arch")
    for section in ("student", "teacher"):
        rate = cfg[section].drop_rate
        _check(0 <= rate < 1, f"{section}.drop_rate", rate, "it must lie in [0, 1)")
    check_optim(cfg.optim, "optim")
    _check_sched(cfg.sched, "sched")

    method_cls = METHODS.get(cfg.method.get("name"), key="method.name")
    _check_method_settings(method_cls, cfg.method)
    method_cls.check_settings(cfg.method)
    if method_cls.needs_teacher:
        check_arch(cfg.teacher.arch, key="teacher.arch")
        _check_teacher(cfg.teacher)


def _check_synthetic_pool(cfg: DictConfig) -> None:
    from kdrun.data import DATASETS
    from kdrun.methods import METHODS

    path = cfg.dataset.path
    _check(path is not None and Path(path).expanduser().is_file(), "dataset.path", path,
           "give the pool file of a data-free run: <run dir>/synthetic/pool.pt")
    _check(cfg.dataset.test_set in DATASETS.names() and cfg.dataset.test_set != "synthetic_pool",
           "dataset.test_set", cfg.dataset.test_set, "name the data set whose test set "
           "evaluates, e.g. cifar10 (read from dataset.root)")
    if METHODS.get(cfg.method.name).needs_teacher and cfg.teacher.checkpoint == "auto":
        raise ConfigError("teacher.checkpoint=auto would train a teacher on the synthetic pool: "
                          "give the teacher that made it, teacher.checkpoint=FILE")


def _check_eval(ev: DictConfig) -> None:
    _check(ev.calibration_bins >= 1, "eval.calibration_bins", ev.calibration_bins, "use >= 1")
    _check(ev.batch_size >= 1, "eval.batch_size", ev.batch_size, "use >= 1")
    if ev.subset is not None:
        _check(ev.subset >= 1, "eval.subset", ev.subset, "use >= 1, or null for the test set")
    for name in ("pgd_linf", "pgd_l2", "fgsm"):
        for eps in ev[name].eps:
            _check(eps > 0, f"eval.{name}.eps", list(ev[name].eps), "budgets must be > 0")
    from kdrun.evaluation.corruptions import CORRUPTIONS

    for name in ev.corruptions:
        _check(name in CORRUPTIONS, "eval.corruptions", name,
               f"choose from {', '.join(CORRUPTIONS)}")
    for severity in ev.severities:
        _check(1 <= severity <= 5, "eval.severities", list(ev.severities), "severities are 1..5")
    for name in ("pgd_linf", "pgd_l2"):
        _check(ev[name].steps >= 1, f"eval.{name}.steps", ev[name].steps, "use >= 1")
        _check(ev[name].step_size > 0, f"eval.{name}.step_size", ev[name].step_size, "use > 0")


def _check_device(device: str) -> None:
    import torch

    ok = device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:")
    _check(ok, "trainer.device", device, "use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device} but no CUDA device is available: "
                          "use trainer.device=auto or cpu")


def _check_distributed(cfg: DictConfig) -> None:
    """What a run under torchrun (or a multi-task SLURM job) needs, checked on every rank."""
    import torch

    from kdrun.engine import distributed

    world = distributed.launched_world_size()
    if world == 1:
        _check(not cfg.trainer.sync_bn, "trainer.sync_bn", True,
               "synchronised BatchNorm needs several processes (torchrun); set it to false")
        return
    _check(choice(cfg.mode) == "train", "mode", choice(cfg.mode),
           "mode=eval runs in one process: start it without torchrun")
    distributed.local_batch_size(cfg.trainer.batch_size, "trainer.batch_size")
    distributed.local_batch_size(cfg.teacher.batch_size, "teacher.batch_size")
    if cfg.trainer.sync_bn:
        _check(cfg.trainer.device != "cpu" and torch.cuda.is_available(), "trainer.sync_bn", True,
               "torch's SyncBatchNorm runs on CUDA only: set it to false on CPUs")


def check_optim(optim: DictConfig, key: str) -> None:
    from hydra.utils import get_class

    target = optim.get("_target_")
    try:
        get_class(target)
    except Exception:
        raise ConfigError(f"{key}._target_={target} is not an importable optimiser class: "
                          "use e.g. torch.optim.SGD or choose optim=sgd|adamw") from None
    _check(optim.get("lr", 0) > 0, f"{key}.lr", optim.get("lr"), "the learning rate must be > 0")


def _check_sched(sched: DictConfig, key: str) -> None:
    for m in sched.milestones:
        _check(0 < m < 1, f"{key}.milestones", list(sched.milestones),
               "milestones are fractions of the epochs, each in (0, 1)")
    _check(sched.warmup_epochs >= 0, f"{key}.warmup_epochs", sched.warmup_epochs, "use >= 0")


def _check_teacher(teacher: DictConfig) -> None:
    _check(0 <= teacher.corruption <= 1, "teacher.corruption", teacher.corruption,
           "it is the share of teacher outputs shuffled, in [0, 1]")
    ckpt = teacher.checkpoint
    if ckpt in ("auto", "pretrained"):
        if ckpt == "auto":
            _check(teacher.epochs >= 1, "teacher.epochs", teacher.epochs, "use >= 1")
            check_optim(teacher.optim, "teacher.optim")
            _check_sched(teacher.sched, "teacher.sched")
        else:
            _check(teacher.arch.startswith("timm/"), "teacher.checkpoint", ckpt,
                   "pretrained weights exist only for timm models (teacher.arch=timm/NAME)")
        return
    if not Path(ckpt).expanduser().is_file():
        raise ConfigError(f"teacher.checkpoint={ckpt} does not exist: give the path of a "
                          "checkpoint file, or teacher.checkpoint=auto to train and cache one")


def _check_method_settings(method_cls: type, method: DictConfig) -> None:
    """A method's YAML must give exactly the settings its class's constructor takes."""
    params = inspect.signature(method_cls.__init__).parameters
    built = ("self", "student", "teacher", "make_model")  # given by kdrun, not by the YAML
    settings = {name: p for name, p in params.items() if name not in built}
    allowed = ", ".join(sorted(settings)) or "(none)"
    for key in method:
        if key != "name" and key not in settings:
            raise ConfigError(f"method.{key} is not a setting of method {method.name}: "
                              f"its settings are {allowed}")
    for name, param in settings.items():
        if param.default is inspect.Parameter.empty and name not in method:
            raise ConfigError(f"method {method.name} needs method.{name}: add it to "
                              f"conf/method/{method.name}.yaml or pass +method.{name}=VALUE")


def choice(value: Enum | str) -> str:
    """The string of an enum setting (composed configs hold the Enum, hand-made ones a str)."""
    return value.value if isinstance(value, Enum) else value


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (for W&B and cache keys)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
