"""`shards` and `cmd_model` import nothing else of the project and never Ray (README.md, "Layout").

Checked on the import graph read from the syntax tree of every module of both packages, their
subpackages included: every `import` and `from ... import` wherever it stands (inside functions
too), relative imports resolved against the module's package, and `importlib.import_module` /
`__import__` calls with a literal name. Then, as the running code sees it: importing every module
of both packages in a fresh interpreter loads neither Ray nor another package of the project,
whatever their third-party imports pull in.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("harness", "cmd_model", "shards", "bench", "tests")
LEAF_PACKAGES = ("shards", "cmd_model")  # the packages that must stand alone
FORBIDDEN_EVERYWHERE = ("ray",)


@dataclass(frozen=True)
class Import:
    file: str
    line: int
    module: str  # absolute dotted name, relative imports resolved

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.module}"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` in `module`; raises ImportError past
    the top-level package, as Python does."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(base):
        raise ImportError(f"relative import beyond the top-level package in {module}")
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every module `path` may import, with its line."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    where = str(path.relative_to(root))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(where, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield Import(where, node.lineno, node.module or "")
                continue
            try:
                target = resolve(module, is_package, node.level, node.module)
            except ImportError as exc:
                yield Import(where, node.lineno, f"<{exc}>")
                continue
            yield Import(where, node.lineno, target)
            if node.module is None:  # `from . import x`: x may be a module of the package
                for alias in node.names:
                    yield Import(where, node.lineno, f"{target}.{alias.name}")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            yield Import(where, node.lineno, node.args[0].value)


def boundary_violations(root: Path, packages: tuple[str, ...] = LEAF_PACKAGES,
                        project: tuple[str, ...] = PROJECT_PACKAGES) -> list[Import]:
    """Imports in `packages` (every module, recursively) of Ray, of another project package, or
    past the top-level package."""
    bad = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for imp in imports_of(path, root):
                top = imp.module.split(".")[0]
                if (imp.module.startswith("<") or top in FORBIDDEN_EVERYWHERE
                        or (top in project and top != package)):
                    bad.append(imp)
    return bad


def test_shards_and_cmd_model_import_nothing_else_of_the_project_and_never_ray():
    modules = [p for package in LEAF_PACKAGES for p in (ROOT / package).rglob("*.py")]
    assert any(p.parent.name == "layouts" for p in modules) and any(p.parent.name == "loss" for p in modules)
    bad = boundary_violations(ROOT)
    assert not bad, "\n".join(map(str, bad))


def test_the_checker_reports_a_planted_bad_import(tmp_path):
    """A leaf package written here, with bad imports where a text search is easy to miss: in a
    function of a subpackage, behind a relative import, and by name through importlib."""
    pkg = tmp_path / "shards"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from .deep import run\n")
    (pkg / "other.py").write_text("import torch\nVALUE = 1\n")
    (pkg / "sub" / "deep.py").write_text(
        "import json\n"
        "from ..other import VALUE\n"
        "\n"
        "def run():\n"
        "    import ray.train\n"
        "    from harness.config import TrainConfig\n"
        "    return ray.train, TrainConfig, VALUE\n"
        "\n"
        "def later():\n"
        "    import importlib\n"
        "    return importlib.import_module('cmd_model.engine')\n"
        "\n"
        "def escape():\n"
        "    from ... import harness\n"
        "    return harness\n")
    found = {(i.file, i.line, i.module) for i in boundary_violations(tmp_path, packages=("shards",))}
    deep = str(Path("shards", "sub", "deep.py"))
    assert found == {
        (deep, 5, "ray.train"),
        (deep, 6, "harness.config"),
        (deep, 11, "cmd_model.engine"),
        (deep, 14, "<relative import beyond the top-level package in shards.sub.deep>"),
    }
    # the relative imports inside the package resolve to it and pass
    assert {i.module for i in imports_of(pkg / "sub" / "deep.py", tmp_path)} >= {"shards.other"}
    assert {i.module for i in imports_of(pkg / "__init__.py", tmp_path)} == {"shards", "shards.sub"}


def test_importing_every_module_loads_neither_ray_nor_the_rest_of_the_project():
    modules = sorted(module_name(p, ROOT) for package in LEAF_PACKAGES for p in (ROOT / package).rglob("*.py"))
    probe = ("import importlib, sys\n"
             f"for m in {modules!r}:\n"
             "    importlib.import_module(m)\n"
             f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_EVERYWHERE + PROJECT_PACKAGES!r}"
             f" and m.split('.')[0] not in {LEAF_PACKAGES!r})\n"
             "print(loaded)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
