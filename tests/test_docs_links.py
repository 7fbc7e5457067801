"""Every file, folder or module the repository's own text names exists in the repository.

Read: every relative link of every Markdown file and every path-like token anywhere in its text
(prose, backquotes, code blocks); the docstrings and comments of every Python file; the comments
of the YAML files, the Makefile and the Dockerfile. A name that points outside the repository
(`../` past its root) counts as dead: a fresh clone has nothing there.

What counts as a name of the repository:
- a token with a `/` whose first part is a top-level entry of the repository (`harness/tune.py`,
  `tune_spaces/recipes/paper.yaml`), of the citing file's own folder (`iam/aws/*.json` in
  cluster/README.md), or `..`, and whose last part has an extension, ends the token with `/`, or
  is a name the repository has (`cluster/Dockerfile`); a `*` must match at least one file;
- a bare file name ending in `.md` or `.py`: a file of that name must exist (sources and docs
  are never generated outputs here), unless it is a file of the upstream code the method's docs
  cite (UPSTREAM_FILES);
- a dotted name rooted at a package of the project (`harness.objective.rung_epochs`,
  `python -m shards.write`): the module must exist as a file, and the next name, if any, must be
  defined at the top of that module (a def, class, assignment or import);
- a token rooted at `ray/` names a file of the installed Ray (docs/ray-notes.md cites them).
URLs, home paths, placeholders (`<class>`, `{split}`) and the generated outputs in GENERATED
are not names of the repository.
"""
from __future__ import annotations

import ast
import fnmatch
import importlib.util
import io
import re
import subprocess
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "cmd_model", "shards", "tests", "bench")

# Written by the commands, git-ignored, absent from a clone: named in the docs as what a
# command produces or reads, never checked.
GENERATED = (
    "data/",  # datasets and shards (`python -m shards.write`, the generated demo set)
    "runs/",  # studies and runs (`harness/tune.py`, `harness/train.py`)
    ".venv/",  # `make setup`
    "bench/data/demo_curves_v2.parquet",  # `python bench/record_curves.py` (a recording of hours)
)
# Files of the upstream code (CMD's and EsViT's repositories, DINO) that the method's docs cite
# by name.
UPSTREAM_FILES = {"main_esvit.py", "main_dino.py", "eval_linear.py", "eval_knn.py", "vision_transformer.py",
                  "swin_transformer.py"}

TOKEN_EDGE = "`'\"()[],;:!?*"
PATH_CHARS = re.compile(r"^[A-Za-z0-9_.*/-]+$")
DOTTED = re.compile(r"(?<![\w./-])((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Dead:
    file: str
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name}"


def repository_files(root: Path = ROOT) -> list[str]:
    """Tracked files and new ones git does not ignore (what the next commit can hold)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return sorted({p for p in out.splitlines() if (root / p).is_file()})


def installed_ray() -> Path:
    """The installed `ray` package's folder (not imported: only its files are looked at)."""
    return Path(importlib.util.find_spec("ray").origin).parent


def text_to_read(path: Path) -> list[tuple[int, str]]:
    """(line, text) pieces of `path` whose references are checked."""
    if path.suffix == ".md":
        return list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))
    if path.suffix == ".py":
        return python_docs_and_comments(path.read_text(encoding="utf-8"))
    if path.suffix in (".yaml", ".yml", ".toml") or path.name in ("Makefile", "Dockerfile", "run"):
        lines = path.read_text(encoding="utf-8").splitlines()
        return [(n, line.split("#", 1)[1]) for n, line in enumerate(lines, 1) if "#" in line]
    return []


def python_docs_and_comments(source: str) -> list[tuple[int, str]]:
    pieces = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                first = node.body[0].lineno
                pieces += [(first + i, line) for i, line in enumerate(doc.splitlines())]
    return pieces


def path_tokens(text: str) -> list[str]:
    tokens = []
    for raw in text.split():
        if "://" in raw or raw.lstrip(TOKEN_EDGE).startswith(("~", "$", "/", "http", "github.com")):
            continue
        token = raw.strip(TOKEN_EDGE).removesuffix("'s").rstrip(".").strip(TOKEN_EDGE)
        if token.startswith("./"):
            token = token[2:]
        if token and PATH_CHARS.match(token) and ("/" in token or Path(token).suffix in (".md", ".py")):
            tokens.append(token)
    return tokens


def module_defines(module: Path, name: str) -> bool:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def dotted_exists(name: str, root: Path) -> bool:
    """`pkg.mod[.attr...]`: the longest module prefix is a file; the next part is defined in it."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:n])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            return n == len(parts) or module_defines(module, parts[n])
    return False


class Checker:
    """Dead references in the files of a repository rooted at `root`."""

    def __init__(self, root: Path, files: list[str]):
        self.root = root.resolve()
        self.files = files
        self.top = {p.split("/")[0] for p in files}
        self.names = {part for p in files for part in p.split("/")}
        self.checked = 0  # references looked up, so a checker that reads nothing shows

    def path_exists(self, token: str, folder: Path) -> bool | None:
        """None: not a reference to the repository; else whether it exists."""
        if "/" not in token:
            if token in UPSTREAM_FILES:
                return None
            return token in self.names
        first, last = token.split("/")[0], token.rstrip("/").rsplit("/", 1)[-1]
        if first == "ray":  # a file of the installed Ray that docs/ray-notes.md and comments cite
            return (installed_ray().parent / token).exists()
        if first == "..":
            target = (folder / token).resolve()
            return target.is_relative_to(self.root) and self.matches(str(target.relative_to(self.root)))
        if token.startswith(GENERATED) or not ("." in last or token.endswith("/") or last in self.names):
            return None  # an output, or prose such as "the harness/bare ratio"
        if first in self.top:
            return self.matches(token) or self.matches(str((folder / token).relative_to(self.root)))
        if folder != self.root and (folder / first).exists():
            return self.matches(str((folder / token).relative_to(self.root)))
        return None

    def matches(self, relative: str) -> bool:
        relative = relative.rstrip("/")
        if "*" in relative:
            return any(fnmatch.fnmatchcase(p, relative) for p in self.files)
        return (self.root / relative).exists()

    def dead(self, relative: str) -> list[Dead]:
        path = self.root / relative
        found = []
        for line, text in text_to_read(path):
            names = set()
            if path.suffix == ".md":
                for target in MD_LINK.findall(text):
                    if not re.match(r"^(\w+:|#)", target):
                        target = target.split("#", 1)[0]
                        resolved = (path.parent / target).resolve()
                        self.checked += 1
                        if not (resolved.is_relative_to(self.root) and resolved.exists()):
                            found.append(Dead(relative, line, target))
                        names.add(target)
            for token in path_tokens(text):
                exists = None if token in names else self.path_exists(token, path.parent)
                self.checked += exists is not None
                if exists is False:
                    found.append(Dead(relative, line, token))
            for name in DOTTED.findall(text):
                self.checked += 1
                if not dotted_exists(name, self.root):
                    found.append(Dead(relative, line, name))
        return found


def test_every_file_folder_and_module_the_repository_names_exists():
    checker = Checker(ROOT, repository_files())
    dead = [d for f in checker.files for d in checker.dead(f)]
    assert not dead, "\n".join(map(str, dead))
    assert checker.checked > 500  # paths, links and modules looked up: the reading works


def test_the_checker_reports_planted_dead_names(tmp_path):
    """A small repository with one live and one dead name of each kind, read by the same checker."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "__init__.py").write_text("")
    (tmp_path / "harness" / "alive.py").write_text(
        '"""Reads docs/guide.md; see harness/gone.py and harness.alive.missing."""\n'
        "import json  # formerly in losses.py\n"
        "def run():\n"
        "    return json\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n"
        "[the readme](../README.md), [notes](notes.md), [outside](../../elsewhere/NOTES.md)\n"
        "Run `python -m harness.alive` (`harness.alive.run`), not `python -m harness.gone`.\n"
        "Written to `runs/demo/best.json` and `data/x/`; see OLD_NOTES.md and `main_esvit.py`.\n"
        "The code is in harness/alive.py and `harness/*.py`, not in `harness/*.yaml`.\n")
    (tmp_path / "README.md").write_text("See [the guide](docs/guide.md#top) and https://example.org/a/b.md.\n")
    (tmp_path / "study.yaml").write_text("name: x  # see harness/alive.py and docs/missing.md\n")
    checker = Checker(tmp_path, repository_files(tmp_path))
    found = {(d.file, d.line, d.name) for f in checker.files for d in checker.dead(f)}
    assert found == {
        ("docs/guide.md", 2, "notes.md"),
        ("docs/guide.md", 2, "../../elsewhere/NOTES.md"),
        ("docs/guide.md", 3, "harness.gone"),
        ("docs/guide.md", 4, "OLD_NOTES.md"),
        ("docs/guide.md", 5, "harness/*.yaml"),
        ("harness/alive.py", 1, "harness/gone.py"),
        ("harness/alive.py", 1, "harness.alive.missing"),
        ("harness/alive.py", 2, "losses.py"),
        ("study.yaml", 1, "docs/missing.md"),
    }
