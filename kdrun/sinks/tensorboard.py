"""TensorBoard event files in <run dir>/tensorboard: every logged number as a scalar at its
step, the figures as images, the config as text, and the final results (results/<key>) beside
the run's settings as hparams. A teacher trained inside the run (or a synthesis) writes its own
series to a subfolder, tensorboard/teacher/, as its steps are its own. TensorBoard cannot
truncate an event file, so a resumed run opens a new one that purges the steps logged after its
checkpoint (`purge_step`): each step is shown once."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING, OmegaConf

from kdrun.checks import require
from kdrun.sinks.base import Logger, Start


@dataclass
class Settings:
    flush_secs: int = MISSING  # seconds between writes to disk

    def __post_init__(self):
        require(self.flush_secs >= 1, "logger.tensorboard.flush_secs", self.flush_secs,
                "use >= 1")


class TensorBoardSink(Logger):
    Settings = Settings

    def __init__(self, folder: Path, settings: Settings, start: Start):
        self.folder, self.settings, self.start = folder, settings, start
        self.writers: dict[str, Any] = {}
        self.last: dict[str, int] = {}  # counter -> last step logged
        self.purge: dict[str, int] = {}  # counter -> first step to show again, after a resume
        self.resumed = False

    @classmethod
    def open(cls, settings: Settings, start: Start) -> TensorBoardSink:
        return cls(start.run_dir / "tensorboard", settings, start)

    def writer(self, counter: str):
        """One writer per series, opened when the series is first logged: the run's in
        tensorboard/, others' in a subfolder named by their counter's prefix ('teacher/step'
        -> tensorboard/teacher/). Event files an earlier attempt left without a checkpoint to
        resume from are purged whole."""
        if counter not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            sub = self.folder / (counter.rsplit("/", 1)[0] if "/" in counter else "")
            earlier = any(sub.glob("events.out.tfevents.*"))
            purge = self.purge.get(counter, 0 if earlier and not self.resumed else None)
            writer = SummaryWriter(str(sub), purge_step=purge,
                                   flush_secs=self.settings.flush_secs)
            if counter == "step" and purge in (None, 0):  # a fresh record: the config first
                text = OmegaConf.to_yaml(self.start.cfg, resolve=True)
                writer.add_text("config", f"```yaml\n{text}```", 0)
            self.writers[counter] = writer
        return self.writers[counter]

    def log(self, metrics: dict[str, Any], step: int, counter: str = "step") -> None:
        writer = self.writer(counter)
        for tag, value in metrics.items():
            if isinstance(value, numbers.Real):
                writer.add_scalar(tag, value, step)
        self.last[counter] = step

    def images(self, images: dict[str, Path]) -> None:
        from PIL import Image

        for tag, path in images.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer("step").add_image(tag, pixels, self.last.get("step", 0),
                                          dataformats="HWC")

    def results(self, results: dict[str, Any]) -> None:
        """The final results as results/<key> at the last step, and the run's settings (the
        config's top-level values, the method's, the architectures and the data set) beside
        them as hparams."""
        from torch.utils.tensorboard.summary import hparams

        writer = self.writer("step")
        step = self.last.get("step", 0)
        final = {f"results/{k}": v for k, v in results.items() if isinstance(v, numbers.Real)}
        for tag, value in final.items():
            writer.add_scalar(tag, value, step)
        cfg = self.start.cfg
        settings = {key: value for key, value in cfg.items() if _plain(value)}
        settings.update({f"method.{k}": v for k, v in cfg.method.items() if _plain(v)})
        settings.update({"student.arch": cfg.student.arch, "teacher.arch": cfg.teacher.arch,
                         "dataset.name": cfg.dataset.name})
        for summary in hparams(settings, final):
            writer.file_writer.add_summary(summary, step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def position(self) -> dict[str, Any]:
        return {"tensorboard_folder": str(self.folder.resolve()), "tensorboard_steps":
                dict(self.last)}

    def rewind(self, position: dict[str, Any]) -> None:
        """Only this folder's series (a teacher resumed in another run's directory leaves
        that run's record alone): each reopened to purge the steps after `position`."""
        if position.get("tensorboard_folder") != str(self.folder.resolve()):
            return
        self.resumed = True
        for counter, step in position["tensorboard_steps"].items():
            self.purge[counter] = step + 1
            if counter in self.writers:
                self.writers.pop(counter).close()
            self.last[counter] = step


def _plain(value) -> bool:
    return value is not None and isinstance(value, (bool, int, float, str))
