"""Published weight files as kdrun models: `zoo:<source>/<name>` (registry.yaml) is
downloaded once into the cache (download.py), its SHA-256 checked, its state dict converted
onto kdrun's architecture (convert.py) and kept as a kdrun model file that carries the input
normalisation the weights were trained with. Later uses read the converted file."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy
import torch
from filelock import FileLock

from kdrun.errors import KdrunError
from kdrun.models import MODELS, build_model
from kdrun.models.files import save_model
from kdrun.runtime import checkpoint
from kdrun.weights.convert import ConversionError, convert
from kdrun.weights.download import DownloadError, check_sha256, download, extract_member
from kdrun.weights.registry import PREFIX, WeightFile, check_fits, is_zoo, lookup, weight_files

log = logging.getLogger(__name__)

# A measured accuracy further than this from the source's figure (percentage points) is warned
# about: more than evaluation noise (precision, data decoding) explains. RepDistiller issue 29's
# ResNet-110 (70.27 against 74.31) is the case it is for.
ACCURACY_TOLERANCE = 1.0
# Raised when the registry's entries or kdrun's conversion rules change in a way that changes
# converted files: those cached before are converted again.
CONVERSION_VERSION = 1
# The non-tensor values the published files hold, allowed when they are read with
# weights_only=True: RepDistiller's optimizer state stores its learning rate as a numpy
# float64, pickled as numpy.core.multiarray.scalar (numpy 1) and read under numpy 2's name too.
_MULTIARRAY = importlib.import_module("numpy._core.multiarray"
                                      if int(numpy.__version__.split(".")[0]) >= 2
                                      else "numpy.core.multiarray")
SAFE_GLOBALS = [(_MULTIARRAY.scalar, "numpy.core.multiarray.scalar"), _MULTIARRAY.scalar,
                numpy.dtype, type(numpy.dtype("float64")), argparse.Namespace]


def far_from_reported(measured: float, reported: float) -> bool:
    return abs(measured - reported) > ACCURACY_TOLERANCE


def zoo_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "zoo"


def converted_path(entry: WeightFile, cache_dir: str | Path) -> Path:
    """Named by what it was made from (conversion_key): a changed entry or conversion makes
    another file instead of reusing a stale one."""
    name = entry.name.split("/", 1)[1]
    return zoo_dir(cache_dir) / entry.source / f"{name}-{conversion_key(entry)}.pt"


def archive_path(entry: WeightFile, cache_dir: str | Path) -> Path:
    return zoo_dir(cache_dir) / "files" / entry.source / Path(entry.url).name


def conversion_key(entry: WeightFile) -> str:
    """What a converted file was made from: the entry (URL, layout, normalisation, ...), the
    architecture's revision and kdrun's conversion version."""
    made_from = {**dataclasses.asdict(entry), "version": CONVERSION_VERSION,
                 "arch_revision": getattr(MODELS.get(entry.arch), "revision", None)}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]


def obtain(entry: WeightFile, cache_dir: str | Path, progress: bool = True) -> Path:
    """The kdrun model file of `entry`, made on first use (downloaded, verified, converted)
    and again when the entry or the conversion changed; concurrent jobs wait for the one
    making it."""
    path = converted_path(entry, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file() and checkpoint.damage(path) is None:
            return path
        published, sha256, pinned = fetch(entry, cache_dir, progress)
        try:
            model = build_model(entry.arch, entry.num_classes, entry.mean, entry.std)
            state_dict = read_state_dict(published, entry)
            model.net.load_state_dict(convert(state_dict, entry.layout,
                                              model.net.state_dict(),
                                              f"{PREFIX}{entry.name} ({published})"))
        except KdrunError as err:
            if pinned:  # the very file the registry names: the entry or kdrun is wrong
                raise
            # a file nobody vouches for that is no weight file (a broken transfer, an error
            # page): removed with its archive, so the next run fetches it anew
            published.unlink()
            if entry.in_archive:
                archive_path(entry, cache_dir).unlink(missing_ok=True)
            raise type(err)(f"{err} (removed; run again to download it anew)") from None
        if not pinned:  # a file that converts: from now on it must stay this file
            checkpoint.record_digest(published)
            log.warning("zoo: %s publishes no checksum for %s; its SHA-256 on first use is %s "
                        "(recorded beside it, and checked on every later use)",
                        entry.source, entry.file_name, sha256)
        save_model(model, path, meta={
            "zoo": entry.name, "source_sha256": sha256, "url": entry.url,
            "member": entry.member, "reported_acc": entry.reported_acc,
            "reported_by": entry.reported_by, "licence": entry.licence,
            "dataset": entry.dataset,
            "normalization": {"mean": entry.mean, "std": entry.std}})
        checkpoint.record_digest(path)
        log.info("zoo: %s converted onto kdrun's %s (%s)", entry.name, entry.arch, path)
    return path


def fetch(entry: WeightFile, cache_dir: str | Path,
          progress: bool = True) -> tuple[Path, str, bool]:
    """The published file in the cache (downloaded if absent), its SHA-256, and whether that
    was checked: against the registry's, or, where the registry has none, against the one
    recorded when the file was first used."""
    dest = zoo_dir(cache_dir) / "files" / entry.source / entry.file
    record = checkpoint.digest_path(dest)
    recorded = (record.read_text().split() or [None])[0] if record.is_file() else None
    expected, where = (entry.sha256, "kdrun's registry") if entry.sha256 else \
        (recorded, f"{record}, recorded at its first use (delete it if the source changed the "
                   "file)")
    if not dest.is_file():
        if entry.member is None:
            return dest, download(entry.url, dest, expected, where, progress), bool(expected)
        archive = archive_path(entry, cache_dir)
        download(entry.url, archive, None, where, progress)
        extract_member(archive, entry.member, dest, entry.url)
    return dest, check_sha256(dest, expected, entry.url, where), bool(expected)


def read_state_dict(path: Path, entry: WeightFile) -> dict[str, torch.Tensor]:
    """The file's state dict, read with weights_only=True and the named harmless globals."""
    stored: Any = checkpoint.load(path, allowed_globals=SAFE_GLOBALS)
    if entry.wrapper is not None:
        if not isinstance(stored, dict) or entry.wrapper not in stored:
            raise ConversionError(f"{path} holds no '{entry.wrapper}' entry, where {entry.source}"
                                  f"'s files keep their weights: it is not {PREFIX}{entry.name}")
        stored = stored[entry.wrapper]
    if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor)
                                               for v in stored.values()):
        raise ConversionError(f"{path} is not a state dict of tensors: it is not "
                              f"{PREFIX}{entry.name}")
    return stored


__all__ = ["ACCURACY_TOLERANCE", "PREFIX", "ConversionError", "DownloadError", "WeightFile",
           "check_fits", "converted_path", "far_from_reported", "is_zoo", "lookup", "obtain",
           "weight_files"]
