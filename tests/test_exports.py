"""Every public module declares ``__all__``, sorted and complete (httpx does the same)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import newsletter

#: every module of the package, sub-packages' modules included (a sub-package's __init__ only describes it)
MODULES = [
    importlib.import_module(info.name)
    for info in pkgutil.walk_packages(newsletter.__path__, prefix="newsletter.")
    if not info.ispkg and not info.name.rsplit(".", 1)[1].startswith("_")
]


def test_every_stage_is_found() -> None:
    names = {module.__name__ for module in MODULES}
    assert {"newsletter.models", "newsletter.issue.parse", "newsletter.render.engine", "newsletter.compose.message",
            "newsletter.deliver.dispatch", "newsletter.store.ledger", "newsletter.preflight.report",
            "newsletter.web.app", "newsletter.cli.commands", "newsletter.devtools.outbox"} <= names


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_complete(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module.__name__} has no __all__"
    assert list(exported) == sorted(exported), f"{module.__name__}.__all__ is not sorted"
    public = {
        name for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert public <= set(exported), f"{module.__name__} does not export {sorted(public - set(exported))}"
    for name in exported:
        assert hasattr(module, name)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_public_functions_have_docstrings(module: ModuleType) -> None:
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert value.__doc__, f"{module.__name__}.{name} has no docstring"
