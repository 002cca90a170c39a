"""Fetching a published weight file into the cache: over HTTP(S) with a progress bar, into a
temporary `.part` file that a later attempt resumes (an HTTP Range request) rather than
restarts, renamed to its final name only when whole; checked against the SHA-256 the registry
expects; a member read out of a downloaded archive. Every failure is one line that names the
URL, the file and what to do, including where to put the file by hand on a machine without
network."""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from kdrun.errors import KdrunError
from kdrun.runtime.checkpoint import sha256

PART_SUFFIX = ".part"
CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(KdrunError):
    """A weight file could not be fetched, or is not the file the registry names."""


def check_sha256(path: Path, expected: str | None, url: str, where: str) -> str:
    """`path`'s SHA-256, after checking it against `expected` (the whole digest, or the prefix a
    source publishes in its file names, as torch.hub checks them) from `where`; a file that
    differs is removed, so the next attempt downloads it again."""
    actual = sha256(path)
    if expected and not actual.startswith(expected.lower()):
        path.unlink()
        raise DownloadError(f"{path} (from {url}) has SHA-256 {actual}, not {expected} as "
                            f"{where} says: the file is damaged, truncated or was replaced at "
                            "its source (removed; run again to download it anew)")
    return actual


def download(url: str, dest: Path, expected_sha256: str | None, where: str,
             progress: bool = True) -> str:
    """`url` saved as `dest` (kept when already there), one process at a time; returns its
    SHA-256, checked against `expected_sha256` from `where`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if not dest.is_file():
            _transfer(url, dest, progress)
    return check_sha256(dest, expected_sha256, url, where)


def _transfer(url: str, dest: Path, progress: bool) -> None:
    """Into `dest`.part, resuming what an earlier attempt left there; renamed when whole."""
    part = dest.with_name(dest.name + PART_SUFFIX)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kdrun"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        total = (err.headers.get("Content-Range") or "").rpartition("/")[2]
        if err.code == 416 and have and total == str(have):  # the part holds every byte
            part.replace(dest)
            return
        if err.code == 416:  # a part that is not a beginning of this file
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url} refused to resume {part} (HTTP 416): it is removed; "
                                "run again to download the file from the start") from None
        raise DownloadError(f"{url} answered HTTP {err.code} ({err.reason}): the file is not "
                            f"where kdrun's registry says; if you have it, put it at "
                            f"{dest}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot download {url} ({reason}): on a machine without network, "
                            f"download it by hand and put it at {dest}") from None
    with response:
        if response.status != 206:  # the server ignored the range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, disable=not progress,
                     desc=f"downloading {dest.name}") as bar:
            try:
                shutil.copyfileobj(_Counted(response, bar), f, CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(f"the download of {url} broke off after {f.tell()} bytes "
                                    f"({err}): run again to resume it ({part} is kept)") from None
            received = f.tell()
            f.flush()
            os.fsync(f.fileno())
    if total is not None and received < total:
        raise DownloadError(f"the download of {url} stopped at {received} of {total} bytes: "
                            f"run again to resume it ({part} is kept)")
    part.replace(dest)


def extract_member(archive: Path, member: str, dest: Path, url: str) -> None:
    """The one archive member `member` written to `dest` (atomically); nothing else is read
    out of the archive."""
    try:
        with tarfile.open(archive) as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                names = [n for n in tar.getnames() if n.endswith((".pth", ".pt"))][:8]
                raise DownloadError(f"{archive} (from {url}) holds no {member}: its weight files "
                                    f"are {', '.join(names) or 'none'}; the archive changed at "
                                    "its source, or is another file") from None
            source = tar.extractfile(info)
            if source is None:
                raise DownloadError(f"{member} in {archive} (from {url}) is a folder or link, "
                                    "not a weight file: the archive is not the one kdrun's "
                                    "registry names")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + PART_SUFFIX)
            with source, open(tmp, "wb") as f:
                shutil.copyfileobj(source, f, CHUNK)
            tmp.replace(dest)
    except (tarfile.TarError, EOFError) as err:
        raise DownloadError(f"{archive} (from {url}) is not a readable tar archive ({err}): "
                            "remove it and run again to download it anew") from None


class _Counted:
    """A response whose reads move the progress bar."""

    def __init__(self, response, bar: tqdm):
        self.response, self.bar = response, bar

    def read(self, size: int = -1) -> bytes:
        block = self.response.read(size)
        self.bar.update(len(block))
        return block
