"""Meta-tests: every hookspec is typed, documented in its docstring and in docs/, and has a test."""

import inspect
import re
from pathlib import Path

import pytest

from didmos_host import hookspecs

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(name for name, function in vars(hookspecs).items()
               if name.startswith("didmos_") and inspect.isfunction(function))


def test_there_are_hookspecs():
    assert len(SPECS) >= 14


@pytest.mark.parametrize("name", SPECS)
def test_hookspec_has_docstring_and_return_annotation(name):
    function = getattr(hookspecs, name)
    assert (function.__doc__ or "").strip(), f"{name} needs a docstring"
    assert "return" in inspect.get_annotations(function), f"{name} needs a return annotation"


@pytest.mark.parametrize("name", SPECS)
def test_hookspec_has_a_documentation_section(name):
    text = (ROOT / "docs" / "hooks.md").read_text()
    assert re.search(rf"^## {name}\b", text, re.M), f"docs/hooks.md has no '## {name}' section"


@pytest.mark.parametrize("name", SPECS)
def test_hookspec_is_used_by_a_test(name):
    tests = [path for path in (ROOT / "tests").rglob("test_*.py") if path.name != "test_hookspecs.py"]
    tests += list((ROOT / "plugins").glob("*/tests/test_*.py"))
    assert any(name in path.read_text() for path in tests), f"no test exercises the hook {name}"
