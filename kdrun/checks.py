"""The checks every layer's settings share: a one-line ConfigError that names the key, the value
and what is allowed, and typed settings read from a config node into a dataclass."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from kdrun.errors import ConfigError

S = TypeVar("S")


@dataclass
class NoSettings:
    """The settings of a plug-in that has none."""


def require(ok: bool, key: str, value, allowed: str) -> None:
    """Raise the one-line ConfigError that names the key, its value and what is allowed."""
    if not ok:
        raise ConfigError(f"{key}={value} is not allowed: {allowed}")


def check_optim(optim: Any, key: str) -> None:
    """A partial optimiser config (`_target_` a torch optimiser class, a positive lr)."""
    from hydra.utils import get_class

    target = optim.get("_target_")
    try:
        optimizer = get_class(target)
    except Exception:
        raise ConfigError(f"{key}._target_={target} is not an importable optimiser class: "
                          "use e.g. torch.optim.SGD or choose optim=sgd|adamw") from None
    accepted = inspect.signature(optimizer).parameters
    for name in optim:
        require(name in accepted or name.startswith("_"), f"{key}.{name}", optim[name],
                f"{target} takes no such argument; it takes "
                f"{', '.join(p for p in accepted if p != 'params')}")
    require(optim.get("lr", 0) > 0, f"{key}.lr", optim.get("lr"), "the learning rate must be > 0")


def typed_settings(node: DictConfig | dict, cls: type[S], key: str, owner: str,
                   yaml: str) -> S:
    """`node` (interpolations resolved) as an instance of the dataclass `cls`, whose
    __post_init__ checks ranges. Unknown keys, wrong types and missing values become one line:
    `key` is the node's place in the config (method), `owner` what the settings belong to
    (method kd), `yaml` the file that holds them."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    names = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), plain))
    except ConfigKeyError as err:
        raise ConfigError(f"{key}.{err.full_key} is not a setting of {owner}: its settings are "
                          f"{', '.join(sorted(names)) or '(none)'}") from None
    except MissingMandatoryValue as err:
        raise ConfigError(f"{owner} needs {key}.{err.full_key}: add it to {yaml} or pass "
                          f"+{key}.{err.full_key}=VALUE") from None
    except ValidationError as err:
        wanted = {f.name: f.type for f in dataclasses.fields(cls)}.get(str(err.key), "another type")
        raise ConfigError(f"{key}.{err.full_key}={_value(plain, str(err.full_key))} is not "
                          f"allowed: it must be of type {wanted}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {err.msg.splitlines()[0]}") from None


def _value(plain: dict, dotted: str) -> Any:
    node: Any = plain
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
