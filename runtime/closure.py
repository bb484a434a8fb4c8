"""The repository files a module needs: its import closure inside the project, found by reading the source.

DVC must see every file that can change a stage's result, and a resumable checkpoint must not outlive the code
that wrote it; both read this one definition. The walk follows every import statement (module level and inside
functions, where the heavy libraries are imported lazily) and the imports made by name at run time (`DYNAMIC`),
and stops at the repository's edge: third-party packages are pinned by requirements.lock, not hashed here.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Modules that import others by name at run time: importer -> (the module holding the names, their prefix). The
# generator classes are imported by models.base from the registry's "module:Class" targets; the pyfunc a model is
# logged with is chosen by serving from the modality's `serving_module`.
DYNAMIC = {"models.base": ("models.registry", "models."), "serving": ("models.registry", "serving.")}
_DOTTED = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?::[A-Za-z_][A-Za-z0-9_]*)?$")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """Return the file of `module` inside `root` (a package's `__init__.py`), or None outside the project."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def named_modules(path: Path, prefix: str, root: Path = ROOT) -> set[str]:
    """Return the project modules that string constants of `path` name (`"pkg.module"` or `"pkg.module:Name"`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = {m.group(1) for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and (m := _DOTTED.match(node.value)) and m.group(1).startswith(prefix)}
    return {name for name in names if module_file(name, root) is not None}


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Return the project modules `path` imports (absolute names), module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in found if module_file(name, root) is not None}


@cache
def closure(module: str, root: Path = ROOT) -> tuple[Path, ...]:
    """Return every project file `module` imports, directly or not, itself and the packages' `__init__` included."""
    seen: dict[Path, None] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            path = module_file(".".join(parts[:i]), root)
            if path is None or path in seen:
                continue
            seen[path] = None
            todo.extend(imported(path, root))
            name_here = ".".join(parts[:i])
            if name_here in DYNAMIC:
                source, prefix = DYNAMIC[name_here]
                todo.extend(named_modules(module_file(source, root), prefix, root))
    return tuple(sorted(seen))


def digest(module: str, root: Path = ROOT) -> str:
    """Return a sha256 over the paths and contents of `module`'s closure: equal digests, equal code."""
    h = hashlib.sha256()
    for path in closure(module, root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- dvc.yaml code deps


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """Return the code deps a stage running `module` must list: a package folder when the stage imports all of its
    files, else the files it imports (so editing a file reruns exactly the stages that import it)."""
    files = set(closure(module, root))
    out: list[str] = []
    for package in sorted({p.parent for p in files}):
        members = {p for p in package.glob("*.py")}
        mine = sorted(members & files)
        if members == set(mine) and package != root / "tasks":
            out.append(package.relative_to(root).as_posix() + "/")
        else:
            out.extend(p.relative_to(root).as_posix() for p in mine)
    return out


def _is_code_dep(entry: str, root: Path) -> bool:
    path = root / entry.rstrip("/")
    return not entry.startswith("${") and (path.suffix == ".py" or (path / "__init__.py").is_file())


def sync_dvc_yaml(text: str, root: Path = ROOT) -> str:
    """Return dvc.yaml's text with every stage's code deps replaced by `code_deps` of `tasks.<stage>` (listed first,
    before the data deps); comments and everything else are kept."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    in_deps = False
    for line in lines:
        stripped = line.split("#")[0].strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("#"):
            stage, in_deps = stripped[:-1], False
        elif indent == 4 and stripped == "deps:" and stage is not None:
            out.append(line)
            out.extend(f"      - {dep}\n" for dep in code_deps(f"tasks.{stage}", root))
            in_deps = True
            continue
        elif indent <= 4 and stripped:
            in_deps = False
        if in_deps and stripped.startswith("- "):
            entry = stripped[2:].split("#")[0].strip()
            if _is_code_dep(entry, root):
                continue
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> None:
    """Check (default) or rewrite (--write) the code deps of every stage in dvc.yaml."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtime.closure", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml in place")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    text = args.dvc_yaml.read_text(encoding="utf-8")
    synced = sync_dvc_yaml(text, args.dvc_yaml.resolve().parent)
    if args.write:
        from runtime.io import write_text

        write_text(args.dvc_yaml, synced)
    elif synced != text:
        sys.stderr.write(f"error: {args.dvc_yaml}: stage code deps differ from their import closures; run "
                         "`python -m runtime.closure --write`\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
