"""The import graph runs one way (issue 16): core ← producers ← stream ← sinks; router and cache
depend on the core only; the tools (cli, demo, …) may use every room, and no room uses them.

Read from the source with ``ast`` (nothing is imported), counting every import — top level,
inside a function, under ``TYPE_CHECKING`` — since a function-local import is a dependency all
the same. A room is a package or a set of top-level modules:

- core: the schema and what every room shares — ``events``, ``config``, ``wire``, ``money``,
  ``scopes``, ``alerts`` (the alert record), ``topics`` (topic names and creation),
  ``livespend`` (Redis key layout and reader), ``budget`` (the budget guard: the SDK, the
  router and any service reserve through it) — plus two shared leaves that still live inside a
  room's package: ``stream.prices`` (the price book; the router prices models with it) and
  ``cache.embedders`` (the embedding model; the router's complexity policy uses it). Each of
  those must itself import only the core.
- producers, ingest, stream, sinks, router, cache: their packages. ``ingest`` (the HTTP/OTLP
  gateway) is a producer for services that cannot import the SDK: it publishes through the
  SDK's emitter, and nothing but the tools imports it.
- tools: ``cli``, ``demo`` (and ``demo_otlp``), ``pricing`` (the ``spendstream price``
  command), ``probes`` (the demo's and the stack's queries) and ``stack`` (runs the local services).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "spendstream"
CORE = {
    "spendstream",
    "spendstream.events",
    "spendstream.config",
    "spendstream.wire",
    "spendstream.money",
    "spendstream.scopes",
    "spendstream.alerts",
    "spendstream.topics",
    "spendstream.livespend",
    "spendstream.budget",
    "spendstream.stream.prices",
    "spendstream.cache.embedders",
}
ROOMS = ("producers", "ingest", "stream", "sinks", "router", "cache")
TOOLS = ("cli", "demo", "demo_otlp", "pricing", "probes", "stack")
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "producers": {"core", "producers"},
    "ingest": {"core", "producers", "ingest"},
    "stream": {"core", "producers", "stream"},
    "sinks": {"core", "producers", "stream", "sinks"},
    "router": {"core", "router"},
    "cache": {"core", "cache"},
    "tools": {"core", *ROOMS, "tools"},
}
LAZY_FACTORIES = {
    ("spendstream.config", "spendstream.cache.semantic"),
    ("spendstream.config", "spendstream.stream.rules"),
}
"""Known exceptions, allowed only as function-local imports: ``Settings.cache_config()`` and
``Settings.rule_config()`` build a room's config object from the environment. They belong in
the rooms (``CacheConfig.from_settings``, ``RuleConfig.from_settings``); until they move,
importing config still loads neither room."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    if module in CORE:
        return "core"
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in ROOMS:
        return parts[1]
    if parts[1] in TOOLS:
        return "tools"
    return "core"


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported spendstream module, whether the import is inside a function) of one file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            local.update(id(n) for n in ast.walk(fn) if n is not fn)
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # ``from . import x`` / ``from .pkg import mod``: x may be a module of its own
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base
                     for a in node.names]  # fmt: skip
        found += [(n, id(node) in local) for n in names if n.split(".")[0] == "spendstream"]
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_rooms_cover_the_package() -> None:
    """Every top-level name is placed on purpose: a new module must be put in a room here."""
    tops = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in _files()}
    placed = {m.split(".")[1] for m in CORE if "." in m} | set(ROOMS) | set(TOOLS) | {"__init__"}
    assert tops <= placed, f"place these in a room in tests/test_imports.py: {tops - placed}"


def test_resolver_reads_relative_imports() -> None:
    """The walker resolves ``..`` and ``from . import mod``: else the graph check sees nothing."""
    got = {m for m, _ in imports(PKG / "router" / "budget.py")}
    assert "spendstream.livespend" in got
    got = {m for m, _ in imports(PKG / "stream" / "windows.py")}
    assert {"spendstream.events", "spendstream.scopes", "spendstream.stream.enrich"} <= got


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_one_way(path: Path) -> None:
    module = module_name(path)
    room = room_of(module)
    wrong = {
        f"{module} ({room}) imports {target} ({room_of(target)})"
        for target, in_function in imports(path)
        if room_of(target) not in ALLOWED[room]
        and not (in_function and (module, target) in LAZY_FACTORIES)
    }
    assert sorted(wrong) == []


def test_shared_leaves_import_only_core() -> None:
    """The core modules placed inside a room's package import the core only (not their room)."""
    for module in ("stream.prices", "cache.embedders"):
        path = PKG / f"{module.replace('.', '/')}.py"
        assert {room_of(t) for t, _ in imports(path)} <= {"core"}, module


DEFINED_ONCE = {
    "spendstream.money": {"PICO", "usd_to_pico", "usd_to_pico_rounded", "pico_to_usd", "usd_str"},
    "spendstream.scopes": {
        "MINUTE", "GLOBAL", "endpoint_scope", "endpoint_service", "model_scope", "service_scope",
        "team_scope",
        "call_scopes", "minute_of", "minute_dt",
    },
}  # fmt: skip


def test_money_and_time_helpers_are_defined_once() -> None:
    """No module defines (a function, class or module-level name) what money/scopes define:
    re-exports are imports, so a second ``def pico_to_usd`` or ``MINUTE = 60`` fails here."""
    names = {n: home for home, ns in DEFINED_ONCE.items() for n in ns}
    twice = []
    for path in _files():
        module = module_name(path)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue
            twice += [f"{module}.{n}" for n in defined if names.get(n, module) != module]
    assert twice == []
