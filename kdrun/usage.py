"""What `kdrun --help` adds to Hydra's help: every method with what it is (the first line of its
YAML's header) and every published teacher file (teacher.checkpoint=zoo:NAME), and for
`kdrun method=NAME --help` that method's YAML as written, comments and all, since they say
what each key means and which values are the paper's. Read from the config files and the
weight registry alone (no data, no network), so help stays quick."""

from __future__ import annotations

import re
from importlib.resources import files

from kdrun.weights.registry import weight_files


def method_files() -> dict[str, str]:
    """Each method's YAML text, by name."""
    folder = files("kdrun.conf") / "method"
    return {entry.name.removesuffix(".yaml"): entry.read_text()
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".yaml")}


def headline(text: str, width: int = 100) -> str:
    """The first clause of a YAML's header comment, at most `width` characters."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    joined = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(header))  # a word hyphenated at a break
    clause = re.split(r"; |\.\s+(?=[A-Z])", joined)[0].rstrip(".")
    if len(clause) <= width:
        return clause
    return clause[:width].rsplit(" ", 1)[0] + " ..."


def extra_help(args: list[str]) -> str:
    methods = method_files()
    chosen = next((a.split("=", 1)[1] for a in args if a.startswith("method=")), None)
    if chosen in methods:
        return (f"== method={chosen} (conf/method/{chosen}.yaml; set any key as "
                f"method.KEY=VALUE) ==\n{methods[chosen].rstrip()}\n")
    width = max(map(len, methods))
    lines = [f"  {name:<{width}}  {headline(text)}" for name, text in methods.items()]
    zoo = [f"  {entry.describe()}" for entry in weight_files().values()]
    return ("== Methods (kdrun method=NAME --help: its settings and what they mean) ==\n"
            + "\n".join(lines) + "\n\n== Published teachers (teacher.checkpoint=zoo:NAME, "
            "also mode=eval checkpoint=zoo:NAME; downloaded once, verified, converted) ==\n"
            + "\n".join(zoo) + "\n")
