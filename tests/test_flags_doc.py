"""`--help` is the reference of run_metasegnet.py's flags: every flag has help text, and
docs/flags.md lists exactly the same flags, each with the default --help gives."""
import os
import re

import pytest

from args import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "flags.md")


def _flags():
    """flag (first spelling) -> its argparse action, for every flag of the parser."""
    return {a.option_strings[0]: a for a in build_parser()._actions
            if a.option_strings and a.dest != "help"}


def _documented():
    """flag -> the default cell of docs/flags.md's table row that names it."""
    rows = {}
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("| `--") or len(cells) < 3:
                continue
            flags = re.findall(r"`(--[\w-]+)`", cells[0])
            defaults = [d.strip() for d in cells[1].split(", ")] \
                if len(flags) > 1 and cells[1].count(", ") == len(flags) - 1 else [cells[1]]
            for i, flag in enumerate(flags):
                assert flag not in rows, f"{flag} is in two rows of docs/flags.md"
                rows[flag] = defaults[i] if len(defaults) == len(flags) else defaults[0]
    return rows


def _shown(default) -> set[str]:
    """How docs/flags.md may write a default (its first word)."""
    if default is None:
        return {"none"}
    if isinstance(default, bool):
        return {"off"} if not default else {"on"}
    if isinstance(default, (list, tuple)):
        return {" ".join(map(str, default))}
    if isinstance(default, (int, float)):
        return {f"{default:g}", f"{default:,}", str(default)}
    return {f"`{default}`", str(default)}


def test_every_flag_has_help():
    assert [flag for flag, a in _flags().items() if not a.help] == []


def test_docs_list_exactly_the_flags_of_help_with_their_defaults():
    flags, documented = _flags(), _documented()
    assert sorted(set(flags) - set(documented)) == [], "flags missing from docs/flags.md"
    assert sorted(set(documented) - set(flags)) == [], "docs/flags.md names flags that do not exist"
    wrong = {}
    for flag, action in flags.items():
        cell = documented[flag]
        first = re.split(r" \(| \[", cell)[0]
        if first.startswith("`") or first in ("none", "off", "on") or \
                re.fullmatch(r"[-\d.,e ]+", first):
            value = first
            if re.fullmatch(r"[-\d.,e]+", first) and isinstance(action.default, (int, float)) \
                    and not isinstance(action.default, bool):
                if float(first.replace(",", "")) == pytest.approx(float(action.default)):
                    continue
            if value not in _shown(action.default):
                wrong[flag] = (cell, action.default)
    assert wrong == {}, "defaults in docs/flags.md differ from --help"
