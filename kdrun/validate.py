"""Checks a composed config before any data is read: every key's range, every name against
the registries (data sets, architectures, methods, corruptions), each method's and data set's
settings against its own typed Settings class. One line per problem, naming the key, the value
and what is allowed."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.checks import check_optim, require
from kdrun.config import choice, schema_keys, unknown_keys
from kdrun.data import dataset_settings
from kdrun.errors import ConfigError
from kdrun.evaluation import build_evaluations, complete_eval_config
from kdrun.methods import METHODS, Networks, build_method, method_settings
from kdrun.models import Classifier, build_model, check_arch
from kdrun.runtime import distributed
from kdrun.sinks import logger_settings
from kdrun.weights.registry import check_fits, is_zoo, lookup


def validate(cfg: DictConfig) -> None:
    """Reject impossible values and unknown names with a message naming key, value and fix."""
    _check_keys(cfg)
    _check_finite(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    require(0.0 <= cfg.alpha <= 1.0, "alpha", cfg.alpha, "it must lie in [0, 1]")
    require(cfg.T > 0, "T", cfg.T, "the temperature must be > 0")
    require(cfg.sigma is None or cfg.sigma >= 0, "sigma", cfg.sigma,
            "the noise std must be >= 0 (null: the noise methods' default)")
    require(cfg.epochs >= 1, "epochs", cfg.epochs, "train for at least 1 epoch")
    require(cfg.seed >= 0, "seed", cfg.seed, "seeds are integers >= 0")
    require(cfg.trainer.batch_size >= 1, "trainer.batch_size", cfg.trainer.batch_size, "use >= 1")
    require(cfg.trainer.eval_every >= 0, "trainer.eval_every", cfg.trainer.eval_every,
            "epochs between test evaluations, >= 0 (0: only at the end)")
    if cfg.trainer.max_steps is not None:
        require(cfg.trainer.max_steps >= 1, "trainer.max_steps", cfg.trainer.max_steps,
                "use >= 1, or null for no limit")
    _check_device(cfg.trainer.device)
    if cfg.trainer.cuda_graph:
        require(cfg.trainer.device != "cpu" and torch.cuda.is_available(), "trainer.cuda_graph",
                True, "CUDA graphs need a CUDA device: set it to null (on with CUDA) or false")
    _check_distributed(cfg)
    if choice(cfg.mode) == "eval":
        require(cfg.checkpoint is not None, "checkpoint", cfg.checkpoint,
                "mode=eval needs checkpoint=PATH of a model file (e.g. <run "
                "dir>/checkpoints/student.pt)")
        if is_zoo(cfg.checkpoint):
            check_fits(lookup(cfg.checkpoint, "checkpoint"), "checkpoint",
                       cfg.dataset.test_set or cfg.dataset.name, cfg.dataset.num_classes)
        else:
            _check_file("checkpoint", cfg.checkpoint, "give the path of a model file (e.g. "
                        "<run dir>/checkpoints/student.pt), or a published one, zoo:NAME")

    dataset_settings(cfg.dataset)
    _check_eval(cfg)
    for name, settings in cfg.logger.items():
        logger_settings(name, settings)

    check_arch(cfg.student.arch, key="student.arch")
    for section in ("student", "teacher"):
        rate = cfg[section].drop_rate
        require(0 <= rate < 1, f"{section}.drop_rate", rate, "it must lie in [0, 1)")
    check_optim(cfg.optim, "optim")
    _check_sched(cfg.sched, "sched")

    method_settings(cfg.method)
    if METHODS.get(cfg.method.name).needs_teacher:
        check_arch(cfg.teacher.arch, key="teacher.arch")
        _check_teacher(cfg.teacher, cfg.dataset)
        if cfg.dataset.name == "synthetic_pool" and cfg.teacher.checkpoint == "auto":
            raise ConfigError("teacher.checkpoint=auto would train a teacher on the synthetic "
                              "pool: give the teacher that made it, teacher.checkpoint=FILE")
    if METHODS.get(cfg.method.name).reads_features:
        _check_feature_connections(cfg)


def _check_feature_connections(cfg: DictConfig) -> None:
    """A method that connects feature maps is built once on meta-device networks (no memory,
    no compute), so a stage index or shape it cannot connect is one line before the data is
    read and a teacher trained."""
    d = cfg.dataset

    def make_model(arch: str, **kwargs) -> Classifier:
        return build_model(arch, d.num_classes, d.mean, d.std, **kwargs)

    with torch.device("meta"):
        teacher = make_model(cfg.teacher.arch) if METHODS.get(cfg.method.name).needs_teacher \
            else None
        build_method(cfg.method, Networks(make_model(cfg.student.arch), teacher, make_model,
                                          image_size=d.image_size))


def _check_keys(cfg: DictConfig) -> None:
    """A key kdrun does not read (`+foo=1`, `+trainer.batchsize=4`) would be silently ignored."""
    for key in unknown_keys(cfg):
        near = _nearest_keys(key)
        hint = f"did you mean {' or '.join(near)}?" if near else "remove it"
        raise ConfigError(f"{key} is not a kdrun setting, so it would be ignored: {hint} "
                          "(kdrun --cfg job shows every setting)")


def _check_finite(node: Any, key: str = "") -> None:
    """No setting means infinity or not-a-number (T=inf would train on NaN losses)."""
    if isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for value in node:
            _check_finite(value, key)
    elif isinstance(node, float):
        require(math.isfinite(node), key, node, "numbers must be finite")


def _nearest_keys(key: str) -> list[str]:
    """The schema key closest to `key`, or, if none is close, those whose last part is
    closest to its last part (`batchsize` -> every `*.batch_size`)."""
    known = schema_keys()
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    if near:
        return near
    last = {k.rsplit(".", 1)[-1] for k in known}
    part = difflib.get_close_matches(key.rsplit(".", 1)[-1], last, n=1, cutoff=0.8)
    return [k for k in known if part and k.rsplit(".", 1)[-1] == part[0]]


def _check_eval(cfg: DictConfig) -> None:
    """The evaluations' settings laid over their YAML's and typed, then each one's own checks
    against the whole config (its data sets' names and settings)."""
    eval_cfg = OmegaConf.create(OmegaConf.to_container(cfg.eval, resolve=True))
    complete_eval_config(eval_cfg)
    for evaluation in build_evaluations(eval_cfg):
        evaluation.check(cfg)
    if eval_cfg.teacher:
        require(choice(cfg.mode) == "train" and METHODS.get(cfg.method.name).needs_teacher,
                "eval.teacher", True, "only a training run of a method with a teacher has one "
                "to evaluate (not method=vanilla, nor mode=eval): set it to false")


def _check_device(device: str) -> None:
    ok = device in ("auto", "cpu") or device == "cuda" or device.startswith("cuda:")
    require(ok, "trainer.device", device, "use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device} but no CUDA device is available: "
                          "use trainer.device=auto or cpu")


def _check_distributed(cfg: DictConfig) -> None:
    """What a run under torchrun (or a multi-task SLURM job) needs, checked on every rank."""
    world = distributed.launched_world_size()
    if world == 1:
        require(not cfg.trainer.sync_bn, "trainer.sync_bn", True,
                "synchronised BatchNorm needs several processes (torchrun); set it to false")
        return
    require(choice(cfg.mode) == "train", "mode", choice(cfg.mode),
            "mode=eval runs in one process: start it without torchrun")
    distributed.local_batch_size(cfg.trainer.batch_size, "trainer.batch_size")
    distributed.local_batch_size(cfg.teacher.batch_size, "teacher.batch_size")
    if cfg.trainer.sync_bn:
        require(cfg.trainer.device != "cpu" and torch.cuda.is_available(), "trainer.sync_bn", True,
                "torch's SyncBatchNorm runs on CUDA only: set it to false on CPUs")


def _check_sched(sched: DictConfig, key: str) -> None:
    for m in sched.milestones:
        require(0 < m < 1, f"{key}.milestones", list(sched.milestones),
                "milestones are fractions of the epochs, each in (0, 1)")
    require(sched.warmup_epochs >= 0, f"{key}.warmup_epochs", sched.warmup_epochs, "use >= 0")


def _check_teacher(teacher: DictConfig, dataset: DictConfig) -> None:
    require(0 <= teacher.label_noise <= 1, "teacher.label_noise", teacher.label_noise,
            "it is the share of the teacher's training labels changed, in [0, 1]")
    require(0 <= teacher.output_shuffle <= 1, "teacher.output_shuffle", teacher.output_shuffle,
            "it is the share of teacher outputs shuffled, in [0, 1]")
    ckpt = teacher.checkpoint
    if ckpt in ("auto", "pretrained"):
        if ckpt == "auto":
            require(teacher.epochs >= 1, "teacher.epochs", teacher.epochs, "use >= 1")
            check_optim(teacher.optim, "teacher.optim")
            _check_sched(teacher.sched, "teacher.sched")
        else:
            require(teacher.arch.startswith("timm/"), "teacher.checkpoint", ckpt,
                    "pretrained weights exist only for timm models (teacher.arch=timm/NAME)")
        return
    if is_zoo(ckpt):
        check_fits(lookup(ckpt, "teacher.checkpoint"), "teacher.checkpoint",
                   dataset.test_set or dataset.name, dataset.num_classes, teacher.arch)
        return
    _check_file("teacher.checkpoint", ckpt, "give the path of a checkpoint file, a published "
                "one (zoo:NAME), or teacher.checkpoint=auto to train and cache one")


def _check_file(key: str, value: str, fix: str) -> None:
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}={value} is a directory, not a file: {fix}")
    if not path.is_file():
        raise ConfigError(f"{key}={value} does not exist: {fix}")
