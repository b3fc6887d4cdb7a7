"""File/folder-name -> label rules for ISCX-style datasets (one label per capture file).

ISCX VPN-nonVPN 2016 and ISCX Tor 2016 label traffic by capture file, so labels come from
names. The rules are data (a TOML file), ordered, first match wins; the default file
``rules/iscx.toml`` reproduces the paper's 14 classes (FlowPic conventions) and the
3-class "encryption" and 5-class "application" tasks. Files that belong to none of the
classes (email, P2P, music streaming, VPN-Browsing) are excluded *with a reason*, so a
user can see what was dropped and why.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..errors import ConfigError

DEFAULT_RULES = Path(__file__).with_name("rules") / "iscx.toml"
TASKS = ("all", "encryption", "application")


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    value: str | None = None      # label part, or None when the rule excludes
    exclude: str | None = None    # reason, when the rule excludes


@dataclass(frozen=True)
class Labeling:
    """The verdict of the rules on one path: a label, or an exclusion with its reason."""

    path: str
    label: str | None
    category: str | None
    encryption: str | None
    reason: str = ""

    @property
    def excluded(self) -> bool:
        return self.label is None


def _compile(entries: list[dict], section: str, source: str) -> list[Rule]:
    rules = []
    for i, e in enumerate(entries):
        if "match" not in e or (("value" in e) == ("exclude" in e)):
            raise ConfigError(
                f"{source}: [[{section}]] rule {i + 1} needs 'match' and exactly one of 'value' or 'exclude'"
            )
        try:
            pat = re.compile(e["match"])
        except re.error as err:
            raise ConfigError(f"{source}: [[{section}]] rule {i + 1}: bad regular expression {e['match']!r}: {err}")
        rules.append(Rule(pat, e.get("value"), e.get("exclude")))
    return rules


class LabelRules:
    """Ordered regex rules mapping a capture's relative path to (category, encryption)."""

    def __init__(self, tasks: dict[str, list[str]], encryption: list[Rule], category: list[Rule], source: str = ""):
        missing = [t for t in TASKS if t not in tasks]
        if missing:
            raise ConfigError(f"{source}: [tasks] must list the classes of {missing}")
        self.tasks = {k: list(v) for k, v in tasks.items()}
        self.encryption_rules = encryption
        self.category_rules = category
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> "LabelRules":
        """Read a rules TOML (the packaged ISCX default when ``path`` is None)."""
        p = Path(path) if path is not None else DEFAULT_RULES
        try:
            doc = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"label rules file not found: {p}")
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML: {err}")
        return cls(
            doc.get("tasks", {}),
            _compile(doc.get("encryption", []), "encryption", str(p)),
            _compile(doc.get("category", []), "category", str(p)),
            source=str(p),
        )

    def classes(self, task: str = "all") -> list[str]:
        if task not in self.tasks:
            raise ConfigError(f"unknown task {task!r}: the rules define {sorted(self.tasks)}")
        return list(self.tasks[task])

    @staticmethod
    def _first(rules: list[Rule], key: str) -> Rule | None:
        return next((r for r in rules if r.pattern.search(key)), None)

    def label(self, path: str | PurePath, task: str = "all") -> Labeling:
        """Label one capture path (relative to the dataset root is best: folder names count)."""
        classes = self.classes(task)
        key = str(PurePath(path).as_posix()).lower()
        enc = self._first(self.encryption_rules, key)
        cat = self._first(self.category_rules, key)
        enc_v = enc.value if enc else None
        if cat is None or cat.exclude is not None:
            reason = cat.exclude if cat else "no category rule matched the file name"
            return Labeling(str(path), None, None, enc_v, reason)
        if enc_v is None:
            return Labeling(str(path), None, cat.value, None, "no encryption rule matched the path")
        full = f"{cat.value}_{enc_v}"
        if full not in self.tasks["all"]:
            why = f"{full} is not one of the {len(self.tasks['all'])} classes"
            return Labeling(str(path), None, cat.value, enc_v, why)
        value = {"all": full, "encryption": enc_v, "application": cat.value}.get(task, full)
        if value not in classes:
            return Labeling(str(path), None, cat.value, enc_v, f"{value} is not a class of task {task!r}")
        return Labeling(str(path), value, cat.value, enc_v)


def group_indices(classes: list[str]) -> dict[str, list[int]]:
    """Paper groupings of the 14 labels: per application and per encryption (paper_model.md §1)."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        if "_" not in c:
            continue
        app, enc = c.rsplit("_", 1)
        groups.setdefault(f"app:{app}", []).append(i)
        groups.setdefault(f"enc:{enc}", []).append(i)
    return groups
