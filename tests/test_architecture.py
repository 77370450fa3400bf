"""Import directions between imer's packages, checked on the source with ``ast``.

    imer.pipeline      -> nothing of extractors, store or fusion (decoding only)
    imer.store         -> neither extractors nor fusion (the contract below both)
    imer.extractors    -> never fusion

Every import form counts: ``import a.b``, ``from a import b``, ``from a.b import c``, relative
imports, imports inside functions or ``TYPE_CHECKING`` blocks, and ``importlib.import_module`` /
``__import__`` with a literal name. And ``imer.cli.app`` must start without any heavy library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "imer"

HEAVY = ("torch", "transformers", "opensmile", "facenet_pytorch", "av")

# package -> packages it must not import
RULES: dict[str, tuple[str, ...]] = {
    "imer.extractors": ("imer.fusion",),
    "imer.pipeline": ("imer.fusion", "imer.extractors", "imer.store"),
    "imer.store": ("imer.extractors", "imer.fusion"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name an import in ``source`` (the text of ``module``) can bind or load."""
    tree = ast.parse(source)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            for alias in node.names:
                if alias.name != "*":
                    found.add(f"{base}.{alias.name}")  # `from imer import fusion` imports imer.fusion
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _hits(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def _violations(package: str, forbidden: tuple[str, ...]) -> tuple[list[str], int]:
    folder = PKG / package.split(".", 1)[1]
    files = sorted(folder.rglob("*.py"))
    bad = []
    for f in files:
        names = imported_modules(f.read_text(encoding="utf-8"), module_name(f), f.name == "__init__.py")
        for hit in _hits(names, forbidden):
            bad.append(f"{f.relative_to(REPO)} imports {hit}")
    return bad, len(files)


@pytest.mark.parametrize("package", sorted(RULES))
def test_import_directions(package):
    bad, n = _violations(package, RULES[package])
    assert n > 0, f"no source files found for {package}"
    assert not bad, "\n".join(bad)


def test_extractors_and_pipeline_never_import_fusion():
    for package in ("imer.extractors", "imer.pipeline"):
        bad, n = _violations(package, ("imer.fusion",))
        assert n > 0 and not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source,module,is_package,want",
    [
        ("import imer.fusion.bundle", "imer.store.x", False, "imer.fusion.bundle"),
        ("import imer.fusion as f", "imer.store.x", False, "imer.fusion"),
        ("from imer.fusion.data import Normalizer", "imer.store.x", False, "imer.fusion.data"),
        ("from imer import fusion", "imer.store.x", False, "imer.fusion"),
        ("def f():\n    from imer.extractors.base import Extractor\n", "imer.store.x", False, "imer.extractors.base"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import imer.fusion\n", "imer.store.x", False, "imer.fusion"),
        ("from ..fusion import bundle", "imer.store.x", False, "imer.fusion.bundle"),
        ("from .. import fusion", "imer.store", True, "imer.fusion"),  # in imer/store/__init__.py .. is imer
        ("import importlib\nimportlib.import_module('imer.fusion.base')", "imer.store.x", False, "imer.fusion.base"),
        ("__import__('imer.extractors')", "imer.store.x", False, "imer.extractors"),
    ],
)
def test_the_checker_sees_every_import_form(source, module, is_package, want):
    names = imported_modules(source, module, is_package)
    assert want in names, names
    assert _hits(names, ("imer.fusion", "imer.extractors"))


def test_the_checker_does_not_flag_allowed_imports():
    names = imported_modules("from imer.store.spec import FeatureSpec\nimport imer.types\nfrom . import compile\n", "imer.store.format", False)
    assert not _hits(names, RULES["imer.store"])
    assert "imer.store.compile" in names


def test_cli_imports_no_heavy_library_at_start_up():
    code = f"import imer.cli.app, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
