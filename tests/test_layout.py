"""The layout tells the architecture: the shared domain at the bottom, no cycles above it."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("domain", "api", "infra", "scaler", "simulator")
# What each package may import of the others; anything else is a layering error.
ALLOWED = {
    "domain": set(),
    "simulator": {"domain"},
    "scaler": {"domain"},
    "infra": {"domain"},
    "api": {"domain", "infra", "scaler"},
}
ROLE_MODULES = {
    "frontend": "api/frontend.py",
    "model-job-executor": "api/model_job_executor.py",
    "chat-job-executor": "api/chat_job_executor/",
    "task-executor-manager": "scaler/task_executor_manager.py",
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of this project that ``path`` imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            graph[package] |= imported_packages(path) - {package}
    return graph


def test_top_level_packages_form_no_cycle() -> None:
    graph = package_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"import cycle between packages: {exc.args[1]}") from exc
    assert order[0] == "domain"


def test_each_package_imports_only_what_its_layer_allows() -> None:
    graph = package_graph()
    assert {package: graph[package] - ALLOWED[package] for package in PACKAGES} == {
        package: set() for package in PACKAGES
    }


def test_the_detector_sees_an_import_wherever_it_stands(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import json\nfrom api.errors import AifError\n"
        "def f():\n    import infra.manifests\n    from . import sibling\n",
        encoding="utf-8",
    )
    assert imported_packages(module) == {"api", "infra"}


def test_each_role_has_a_module_named_for_it_and_the_readme_names_it() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for role, module in ROLE_MODULES.items():
        assert (REPO_ROOT / module).exists(), role
        assert f"`{module}`" in readme, f"the README's role table does not name {module}"
