"""Every command of the project answers `--help` (exit 0, its own usage), as README.md promises.

The commands are found twice, from both sides: every module of harness/ and shards/ with a
`__main__` block, and every `python -m harness.<name>`, `python harness/<name>.py` and
`python -m shards.<name>` the Markdown files name. A documented command without a `__main__` block fails too.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs_links import repository_files

ROOT = Path(__file__).resolve().parents[1]
CLI_PACKAGES = ("harness", "shards")
DOC_COMMAND = re.compile(r"python (?:-m ((?:harness|shards)(?:\.\w+)+)|((?:harness|shards)(?:/\w+)+\.py))")


def has_main_block(path: Path) -> bool:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)):
            return True
    return False


def entry_point_modules() -> set[str]:
    """Dotted names of the modules that run as commands."""
    return {".".join(p.relative_to(ROOT).with_suffix("").parts)
            for package in CLI_PACKAGES for p in sorted((ROOT / package).rglob("*.py")) if has_main_block(p)}


def documented_commands() -> dict[str, list[str]]:
    """module -> the command line the docs run it with (`-m` form, or the script path)."""
    out: dict[str, list[str]] = {}
    for md in (ROOT / p for p in repository_files(ROOT) if p.endswith(".md")):
        for module, script in DOC_COMMAND.findall(md.read_text(encoding="utf-8")):
            if module:
                out.setdefault(module, ["-m", module])
            else:
                out[script[:-3].replace("/", ".")] = [script]
    return out


def commands() -> list[list[str]]:
    documented = documented_commands()
    return [documented.get(m, ["-m", m]) for m in sorted(entry_point_modules() | set(documented))]


def test_every_documented_command_is_an_entry_point():
    documented = documented_commands()
    assert {"harness.tune", "harness.train", "harness.final", "shards.write"} <= set(documented)
    assert set(documented) - entry_point_modules() == set()


@pytest.mark.parametrize("command", commands(), ids=lambda c: c[-1])
def test_command_answers_help(command):
    done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    usage = done.stdout.splitlines()[0] if done.stdout else ""
    name = command[-1].removesuffix(".py").replace("/", ".").rsplit(".", 1)[-1]
    assert usage.startswith("usage: ") and name in usage, done.stdout[:500]
