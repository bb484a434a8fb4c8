"""The layout keeps its promises: tasks/ holds the stages only, packages import only what the README table allows,
no module imports itself back, and dvc.yaml's code deps are exactly each stage's import closure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from config.params import STAGES
from runtime.closure import ROOT, closure, code_deps, imported, sync_dvc_yaml

# The README's "Where things live" table: package -> the project packages it may import.
MAY_IMPORT = {
    "runtime": set(),
    "config": {"runtime", "models"},  # models.registry and models.rules only: torch-free
    "cli": {"config", "runtime", "dataprep"},  # dataprep.sources: the preflight walk of the inputs
    "models": set(),  # logged as a registered model's code: it must stand alone
    "serving": {"models"},
    "dataprep": {"config", "runtime"},
    "evaluation": {"config", "runtime", "dataprep", "models"},
    "registry": {"config", "runtime"},
    "training": {"config", "runtime", "dataprep", "evaluation", "models", "registry"},
    "tasks": {"cli", "config", "runtime", "dataprep", "training", "evaluation", "registry", "serving", "models"},
    "flows": {"tasks", "cli", "config", "runtime", "registry"},
}


def project_modules() -> dict[str, Path]:
    out = {}
    for package in MAY_IMPORT:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            out[name] = path
    return out


def module_level_imports(path: Path) -> set[str]:
    """The project modules `path` imports when it is imported (not those imported inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & set(project_modules())


def test_tasks_holds_exactly_the_stage_modules():
    modules = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    assert modules == set(STAGES)
    assert set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) == set(STAGES)


def test_every_package_has_a_one_line_purpose():
    for package in MAY_IMPORT:
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, package


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_only_what_the_layout_allows(package):
    used = set()
    for path in (ROOT / package).glob("*.py"):
        used |= {m.split(".")[0] for m in imported(path)} - {package}
    assert used <= MAY_IMPORT[package], f"{package} imports {sorted(used - MAY_IMPORT[package])}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle of `graph` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_no_import_cycles():
    graph = {name: module_level_imports(path) - {name} for name, path in project_modules().items()}
    assert find_cycle(graph) is None, "import cycle: " + " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def dvc_code_deps(stage: str) -> list[str]:
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    return [d for d in deps if not d.startswith("${")]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lists_every_file_of_its_import_closure(stage):
    deps = dvc_code_deps(stage)
    for path in closure(f"tasks.{stage}"):
        rel = path.relative_to(ROOT).as_posix()
        assert any(rel == d or (d.endswith("/") and rel.startswith(d)) for d in deps), \
            f"dvc.yaml stage {stage} imports {rel} but does not list it; run `python -m runtime.closure --write`"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lists_only_code_it_imports(stage):
    files = {p.relative_to(ROOT).as_posix() for p in closure(f"tasks.{stage}")}
    for dep in dvc_code_deps(stage):
        if dep.endswith("/"):  # a folder: the stage imports every module in it
            members = {p.relative_to(ROOT).as_posix() for p in (ROOT / dep).glob("*.py")}
            assert members <= files, f"{stage} lists {dep} but does not import {sorted(members - files)}"
        else:
            assert dep in files, f"{stage} lists {dep}, which it does not import"


def test_dvc_yaml_is_in_sync_and_the_check_catches_a_missing_dep():
    text = (ROOT / "dvc.yaml").read_text()
    assert sync_dvc_yaml(text) == text
    broken = text.replace("      - dataprep/pii.py\n", "", 1)
    assert broken != text and sync_dvc_yaml(broken) == text  # the dropped dep comes back


def test_closure_follows_lazy_imports_and_the_generator_registry():
    train = {p.relative_to(ROOT).as_posix() for p in closure("tasks.train")}
    assert {"training/ddp.py", "training/checkpoint.py", "models/gpt.py", "models/ddpm.py"} <= train
    assert "dataprep/pii.py" not in train and "registry/gate.py" not in train
    assert "dataprep/pii.py" in code_deps("tasks.clean")


def test_no_flow_module_shadows_a_package():
    """Prefect loads a deployment's flow file as a script, with its folder (flows/) first on sys.path: a module
    there named like a project package (flows/cli.py) would be imported instead of that package."""
    shadowing = {p.stem for p in (ROOT / "flows").glob("*.py")} & set(MAY_IMPORT)
    assert not shadowing, f"flows/ modules named like packages: {sorted(shadowing)}"
