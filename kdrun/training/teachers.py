"""Where a run's teacher comes from: a checkpoint file, a published one (`zoo:NAME`, measured on
its first use on a test set against the accuracy its source reports), timm's pretrained
weights, or (`auto`) the teacher cache, keyed by data set, architecture, seed and training
recipe. A missing cache entry is trained once with the vanilla recipe; a file lock makes
concurrent sweep jobs wait for that one training instead of repeating it or reading half a
file. Under torch.distributed rank 0 holds the lock and reads the file, all ranks train a
missing teacher together, and every rank gets rank 0's weights."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from kdrun.config import to_dict
from kdrun.data import DATASETS, ImageData, TensorSplit, make_loader
from kdrun.data.noise import flip_labels
from kdrun.errors import ConfigError
from kdrun.evaluation.accuracy import evaluate
from kdrun.methods import Networks
from kdrun.methods.base import MethodSettings
from kdrun.methods.vanilla import Vanilla
from kdrun.models import MODELS, Classifier, build_model
from kdrun.models.files import load_model, save_model
from kdrun.runtime import checkpoint, distributed
from kdrun.runtime.device import seed_everything
from kdrun.runtime.run import Run
from kdrun.sinks import PrefixedSink
from kdrun.training.trainer import Recipe, Trainer
from kdrun.weights import (
    ACCURACY_TOLERANCE,
    PREFIX,
    WeightFile,
    far_from_reported,
    is_zoo,
    lookup,
    obtain,
)

log = logging.getLogger(__name__)
# Data-set settings that change how data is read, not what it is: left out of the cache key.
RUNTIME_ONLY_DATASET_KEYS = ("download", "num_workers")
# Keys every data set had when the key was first defined: kept in it, so caches stay valid.
KEY_DEFAULTS = {"path": None, "test_set": None}


def build_teacher(cfg: DictConfig) -> Classifier:
    t, d = cfg.teacher, cfg.dataset
    return build_model(t.arch, d.num_classes, d.mean, d.std, drop_rate=t.drop_rate,
                       pretrained=t.checkpoint == "pretrained" and distributed.is_main())


def teacher_recipe(cfg: DictConfig) -> Recipe:
    t = cfg.teacher
    return Recipe(epochs=t.epochs, batch_size=t.batch_size, optim=t.optim, sched=t.sched)


def cache_entry(cfg: DictConfig) -> Path:
    """The cache folder of the teacher `cfg` asks for: the same recipe, the same folder."""
    dataset = {k: v for k, v in {**KEY_DEFAULTS, **to_dict(cfg.dataset)}.items()
               if k not in RUNTIME_ONLY_DATASET_KEYS}
    if getattr(DATASETS.get(cfg.dataset.name), "READS_ROOT", True):
        dataset["root"] = str(Path(dataset["root"]).expanduser().resolve())
    else:  # a root that is never read would tie the key to the working directory
        dataset.pop("root")
    t = to_dict(cfg.teacher)
    recipe = {"dataset": dataset, "arch": t["arch"], "drop_rate": t["drop_rate"],
              "seed": t["seed"], "epochs": t["epochs"], "batch_size": t["batch_size"],
              "optim": t["optim"], "sched": t["sched"], "max_steps": cfg.trainer.max_steps}
    if t["label_noise"]:  # absent at 0, so the entries cached before the setting stay valid
        recipe["label_noise"] = t["label_noise"]
    revision = getattr(MODELS.get(t["arch"]), "revision", None) \
        if t["arch"] in MODELS.names() else None
    if revision:  # an architecture whose layers changed: its earlier teachers are not it
        recipe["arch_revision"] = revision
    if not dataset.get("val_size"):  # likewise: the teacher trains on every training image
        dataset.pop("val_size", None)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    arch = re.sub(r"[^A-Za-z0-9_.-]", "-", t["arch"])
    name = f"{cfg.dataset.name}-{arch}-seed{t['seed']}-{digest}"
    return Path(t["cache_dir"]).expanduser() / name


def resolve_teacher(run: Run, data: ImageData) -> tuple[Classifier, dict[str, Any]]:
    """The run's teacher, with its weights loaded (training and caching it if need be), and its
    provenance as meta/teacher_* results: the file and its SHA-256 (the exact weights, so two
    runs can say they distilled from the same teacher), and the environment that trained it when
    kdrun did (a teacher's weights depend on the thread count, device and precision, which
    the cache key leaves out)."""
    cfg = run.cfg
    teacher = build_teacher(cfg)
    source = cfg.teacher.checkpoint
    if source == "pretrained":
        log.info("teacher: timm pretrained %s", cfg.teacher.arch)
        distributed.copy_from_main(teacher)
        return teacher, {"meta/teacher_source": f"timm pretrained {cfg.teacher.arch}"}
    if is_zoo(source):
        return teacher, _published(run, data, teacher, lookup(source, "teacher.checkpoint"))
    path = Path(source).expanduser() if source != "auto" else _cached(run, data)
    meta, sha256 = distributed.from_main(lambda: (load_model(teacher, path),
                                                  checkpoint.sha256(path)))
    distributed.copy_from_main(teacher)
    log.info("teacher: %s from %s%s", cfg.teacher.arch, path,
             f" (test acc {meta['test/acc']:.2f}% when trained)" if "test/acc" in meta else "")
    if "zoo" in meta:  # a converted published file given by its path: known by its name
        return teacher, zoo_provenance(meta)
    trained_in = meta.get("environment", {})
    return teacher, {"meta/teacher_source": str(path), "meta/teacher_sha256": sha256,
                     **{f"meta/teacher_{key}": value for key, value in trained_in.items()}}


def _published(run: Run, data: ImageData, teacher: Classifier,
               entry: WeightFile) -> dict[str, Any]:
    """`teacher` loaded from the published file `entry` (fetched and converted on first use);
    its provenance, whose SHA-256 is the published file's, so runs that share it can say so
    whoever converted it."""
    path = distributed.from_main(lambda: obtain(entry, run.cfg.teacher.cache_dir))
    meta = distributed.from_main(lambda: load_model(teacher, path))
    distributed.copy_from_main(teacher)
    log.info("teacher: %s%s (%s, reported %.2f %% by %s)", PREFIX, entry.name, entry.arch,
             entry.reported_acc, entry.reported_by)
    measure_once(run, data, teacher, entry, path)
    return zoo_provenance(meta)


def zoo_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """A published teacher's results keys, from its converted file's record."""
    return {"meta/teacher_source": f"{PREFIX}{meta['zoo']}",
            "meta/teacher_sha256": meta["source_sha256"],
            "meta/teacher_reported_acc": meta["reported_acc"]}


def measure_once(run: Run, data: ImageData, teacher: Classifier, entry: WeightFile,
                 path: Path) -> None:
    """The first time a published teacher meets a test set, its accuracy there, recorded
    beside the converted file and warned about when it is not what the source reports (the
    wrong file, a conversion that lost something, other input normalisation): said before
    the student trains on it, not after."""
    cfg = run.cfg
    record = path.with_name(path.stem + ".measured.json")
    test_set = f"{cfg.dataset.test_set or cfg.dataset.name} test split, {len(data.test)} images"
    measured = distributed.from_main(
        lambda: json.loads(record.read_text()) if record.is_file() else {})
    if test_set in measured:
        return
    teacher.to(run.device)  # every rank evaluates its share of the test set
    loader = make_loader(data.test, cfg.trainer.eval_batch_size, run, train=False, shard=True)
    accuracy = evaluate(teacher, loader, run.autocast)["test/acc"]
    teacher.cpu()
    if not distributed.is_main():
        return
    # whole, never half written (a figure another job adds at the same moment may be lost,
    # and is measured again on its next use)
    tmp = record.with_name(f".{record.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({**measured, test_set: accuracy}, indent=2) + "\n")
    os.replace(tmp, record)
    gap = accuracy - entry.reported_acc
    if cfg.dataset.test_subset is None and far_from_reported(accuracy, entry.reported_acc):
        log.warning("teacher: %s%s measures %.2f %% on the %s, %+.2f points from the %.2f %% "
                    "%s reports (more than %.1f): check the file and the data before "
                    "trusting its rows", PREFIX, entry.name, accuracy, test_set, gap,
                    entry.reported_acc, entry.reported_by, ACCURACY_TOLERANCE)
    else:
        log.info("teacher: %s%s measures %.2f %% on the %s (reported %.2f %%)", PREFIX,
                 entry.name, accuracy, test_set, entry.reported_acc)


def with_label_noise(data: ImageData, cfg: DictConfig) -> ImageData:
    """The teacher's training set with `teacher.label_noise` of its labels changed to another
    class, once and seeded by teacher.seed (Noise as a Resource trains a teacher on randomly
    corrupted labels); the test set stays clean."""
    rate = cfg.teacher.label_noise
    if not rate:
        return data
    if not isinstance(data.train, TensorSplit):
        raise ConfigError(f"teacher.label_noise={rate} needs an in-memory data set (cifar10, "
                          f"cifar100, svhn, cinic10, digits), not {cfg.dataset.name}: set it "
                          "to 0")
    generator = torch.Generator().manual_seed(cfg.teacher.seed)
    labels = flip_labels(data.train.labels, rate, len(data.classes), generator)
    return replace(data, train=TensorSplit(data.train.images, labels))


def _cached(run: Run, data: ImageData) -> Path:
    cfg = run.cfg
    entry = cache_entry(cfg)
    path = entry / "teacher.pt"
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = _held(FileLock(str(entry) + ".lock"), entry) if distributed.is_main() \
        else contextlib.nullcontext()
    with lock:
        if distributed.from_main(lambda: _intact(path)):
            return path
        log.info("teacher: no cached %s for this recipe; training it first (cached in %s)",
                 cfg.teacher.arch, entry)
        seed_everything(cfg.teacher.seed)
        teacher = build_teacher(cfg)
        teacher_run = run.replace(dir=entry, sink=PrefixedSink(run.sink, "teacher/"),
                                  seed=cfg.teacher.seed)
        trainer = Trainer(teacher_run, label="teacher ",
                          resume=True)  # a teacher killed mid-training continues here
        method = Vanilla(MethodSettings("vanilla"), Networks(teacher))
        metrics = trainer.fit(method, with_label_noise(data, cfg), teacher_recipe(cfg))
        save_model(teacher.cpu(), path, meta={
            "test/acc": metrics["test/acc"], "recipe": to_dict(cfg.teacher),
            "dataset": cfg.dataset.name,
            "environment": teacher_run.environment()})
        checkpoint.record_digest(path)
        if distributed.is_main():  # the resume state is no use once the teacher is done
            shutil.rmtree(trainer.checkpoint_path.parent, ignore_errors=True)
    return path


def _intact(path: Path) -> bool:
    """Whether the cache holds a teacher at `path` that can be trusted. A damaged one (a full
    disk, a killed copy) is said in one line and removed, so it is trained again."""
    if not path.is_file():
        return False
    problem = checkpoint.damage(path)
    if problem is None:
        return True
    log.warning("teacher: the cached %s is damaged (%s); training it again", path, problem)
    path.unlink()
    checkpoint.digest_path(path).unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def _held(lock: FileLock, entry: Path):
    """The cache entry's lock; a job that has to wait for another says so."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("teacher: another job is training this teacher (%s is locked); waiting for "
                 "it to finish", entry)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
