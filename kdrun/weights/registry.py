"""The registry of published weight files (registry.yaml): what `zoo:<source>/<name>` names,
read once and checked (its keys, source, normalisation, layout, architecture, digest), so a
bad entry or an unknown name is one line before any work."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kdrun.errors import ConfigError
from kdrun.models import MODELS
from kdrun.weights.convert import LAYOUTS

REGISTRY = Path(__file__).with_name("registry.yaml")
PREFIX = "zoo:"


@dataclass(frozen=True)
class WeightFile:
    name: str  # <source>/<name>
    source: str
    url: str  # the file's, or its archive's
    file: str  # the file's name as published (its path inside the archive, for an archive)
    in_archive: bool
    arch: str
    layout: str
    dataset: str
    num_classes: int
    reported_acc: float
    reported_by: str
    sha256: str | None
    licence: str
    wrapper: str | None
    mean: list[float]
    std: list[float]

    @property
    def member(self) -> str | None:
        return self.file if self.in_archive else None

    @property
    def file_name(self) -> str:
        return Path(self.file).name

    def describe(self) -> str:
        return (f"{PREFIX}{self.name}: {self.arch} on {self.dataset}, reported "
                f"{self.reported_acc:.2f} % ({self.reported_by})")


ENTRY_KEYS = {"file", "arch", "layout", "dataset", "num_classes", "reported_acc",
              "reported_by", "sha256"}
SOURCE_KEYS = {"licence", "wrapper", "normalization"}


@functools.cache
def weight_files(path: Path = REGISTRY) -> dict[str, WeightFile]:
    """Every entry of the registry at `path`, checked: a malformed one is one line naming it."""
    data = yaml.safe_load(path.read_text())
    files = {}
    for name, entry in data["weights"].items():
        source_name = name.split("/", 1)[0]
        source = data["sources"].get(source_name, {})
        problem = registry_problem(entry, source, source_name)
        if problem:
            raise ConfigError(f"{path}: weight file {name} {problem}")
        norm = source["normalization"][entry["dataset"]]
        archive = source.get("archive")
        files[name] = WeightFile(
            name=name, source=source_name,
            url=archive or source["url"].format(file=entry["file"]),
            file=entry["file"], in_archive=archive is not None, arch=entry["arch"],
            layout=entry["layout"], dataset=entry["dataset"],
            num_classes=entry["num_classes"], reported_acc=float(entry["reported_acc"]),
            reported_by=entry["reported_by"],
            sha256=entry["sha256"], licence=source["licence"], wrapper=source["wrapper"],
            mean=list(norm["mean"]), std=list(norm["std"]))
    return files


def registry_problem(entry: dict, source: dict, source_name: str) -> str | None:
    """What is wrong with one registry entry, or None."""
    if not source:
        return f"names source {source_name}, which the registry's sources do not have"
    missing = (ENTRY_KEYS - entry.keys()) | (SOURCE_KEYS - source.keys())
    if missing or not ({"url", "archive"} & source.keys()):
        return f"(or its source) lacks {', '.join(sorted(missing)) or 'url/archive'}"
    if entry["dataset"] not in source["normalization"]:
        return f"is on {entry['dataset']}, for which its source gives no normalization"
    if entry["layout"] not in LAYOUTS:
        return f"has layout {entry['layout']}: use one of {', '.join(LAYOUTS)}"
    if entry["arch"] not in MODELS.names():
        return f"has arch {entry['arch']}, which kdrun's zoo does not have"
    if entry["sha256"] is not None and not re.fullmatch(r"[0-9a-f]{8,64}", entry["sha256"]):
        return "has a sha256 that is not 8 to 64 lowercase hex digits"
    return None


def is_zoo(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def lookup(value: str, key: str) -> WeightFile:
    """The entry `key`=`value` (zoo:<source>/<name>) names; an unknown one lists the known."""
    name = value[len(PREFIX):]
    files = weight_files()
    if name not in files:
        known = ", ".join(f"{PREFIX}{n}" for n in files)
        raise ConfigError(f"{key}={value} is no weight file kdrun knows: use one of {known}")
    return files[name]


def check_fits(entry: WeightFile, key: str, dataset: str, num_classes: int,
               arch: str | None = None, arch_key: str = "teacher") -> None:
    """A weight file fits the run: its data set, class count and (a teacher's) architecture."""
    given = f"{key}={PREFIX}{entry.name}"
    if entry.dataset != dataset or entry.num_classes != num_classes:
        other = " (or teacher.checkpoint=auto to train one)" if key.startswith("teacher") else ""
        raise ConfigError(f"{given} was trained on {entry.dataset} ({entry.num_classes} "
                          f"classes), not on this run's {dataset} ({num_classes} classes): "
                          f"set dataset={entry.dataset} or pick a {dataset} file{other}")
    if arch is not None and arch != entry.arch:
        raise ConfigError(f"{given} is a {entry.arch}, not a {arch}: set "
                          f"{arch_key}={entry.arch}")
