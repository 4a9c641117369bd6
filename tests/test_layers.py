"""The package's import structure: one direction through the house.

Commands (the click layer, the server, bench) sit on top and import downwards only; the library never imports a
command module or click; no two modules import each other in a loop; only base_model imports llama_cpp and only
value_model (a package) imports onnxruntime; only distributed.py imports ray (an optional extra); the runtime never
imports torch.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sia_edge"
COMMAND_MODULES = {"sia_edge.cli", "sia_edge.__main__", "sia_edge.train.cli"}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_command(name: str) -> bool:
    return name in COMMAND_MODULES or name == "sia_edge.commands" or name.startswith("sia_edge.commands.")


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything a module imports, at any depth (deferred imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_the_walker_sees_the_package():
    assert {"sia_edge.engine", "sia_edge.decoder", "sia_edge.commands.common", "sia_edge.cli"} <= set(MODULES)
    assert "sia_edge.decoder" in GRAPH["sia_edge.engine"]  # a known arrow, so an empty graph cannot pass
    assert "sia_edge.settings" in GRAPH["sia_edge.commands.common"]


def test_no_library_module_imports_a_command_module_or_click():
    wrong = []
    for name, path in MODULES.items():
        if is_command(name):
            continue
        imported = imports_of(path)
        wrong += [f"{name} -> {m}" for m in GRAPH[name] if is_command(m)]
        wrong += [f"{name} -> click" for m in imported if m == "click" or m.startswith("click.")][:1]
    assert not wrong, "library modules reaching up into the command layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # a package's __init__ re-exporting its children is not a loop of behaviour
    cycles = [c for c in cycles if not any(part.endswith("__init__") for part in c.split(" -> "))]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("library, allowed", [("llama_cpp", {"sia_edge.base_model"}),
                                              ("onnxruntime", {"sia_edge.value_model"}),
                                              ("ray", {"sia_edge.distributed"})])
def test_heavy_libraries_have_one_door(library, allowed):
    """One door per library: a module, or a package (whose modules may all use it)."""
    users = {name for name, path in MODULES.items()
             if any(m == library or m.startswith(library + ".") for m in imports_of(path))}
    doors = {next((door for door in allowed if name == door or name.startswith(door + ".")), name) for name in users}
    assert doors == allowed


def test_the_runtime_never_imports_torch():
    users = {name for name, path in MODULES.items()
             if any(m == "torch" or m.startswith("torch.") for m in imports_of(path))}
    assert users and all(name.startswith("sia_edge.train.") for name in users), users


def test_no_module_is_over_the_size_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_relative_import_names_a_module_of_the_package():
    """A relative import inside a function runs only when that path runs: one left pointing at a module that moved
    must fail here, not in front of a user."""
    missing = []
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if target not in MODULES:
                    missing.append(f"{name}:{node.lineno} -> {target}")
    assert not missing, "relative imports of modules that do not exist:\n" + "\n".join(missing)
