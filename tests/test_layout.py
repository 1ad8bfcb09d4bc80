"""The house's rule (docs/architecture.md): each part of rlhf_jax imports only parts on lower
floors (or itself), nothing in rlhf_jax imports `experiments`, and notebooks import only the
library. Checked on the source with `ast`, so an import inside a function counts too."""

import ast
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "rlhf_jax"

# Floor of each top-level part of rlhf_jax (a folder or a module), bottom up.
FLOORS = {
    "losses": 0,
    "models": 0,
    "sharding": 1,
    "compilation_cache": 1,
    "training": 2,
    "generation": 2,
    "rl": 3,
    "data": 3,
    "world": 4,
    "trainers": 5,
    "benchmarks": 5,
    "recipes": 6,
}


def _imported_modules(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "rlhf_jax":  # `from rlhf_jax import rl`: the names are the parts
                names += [f"rlhf_jax.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def _part(module: str) -> str | None:
    """ "rlhf_jax.rl.ppo" -> "rl"; None for the package itself or another package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "rlhf_jax" and len(parts) > 1 else None


def test_every_part_of_the_package_has_a_floor():
    parts = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} == set(FLOORS)


def _wrong_imports(relative: pathlib.PurePath, source: str) -> list[str]:
    """The imports of the module at `relative` (a path inside rlhf_jax/) that break the rule."""
    own = relative.parts[0].removesuffix(".py")
    wrong = []
    for module in _imported_modules(source):
        if module.split(".")[0] == "experiments":
            wrong.append(f"{relative} imports {module}")
        part = _part(module)
        if part in FLOORS and part != own and FLOORS[part] >= FLOORS[own]:
            wrong.append(f"{relative} (floor {FLOORS[own]}) imports {module} ({FLOORS[part]})")
    return wrong


def test_imports_go_down_the_floors_only():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts != ("__init__.py",):  # the public surface re-exports from every floor
            wrong += _wrong_imports(relative, path.read_text())
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_upward_and_sideways_imports():
    source = (
        "from rlhf_jax.world import corpus\n"  # up: data (3) -> world (4)
        "def f():\n    from rlhf_jax.rl import rollout\n"  # sideways: data (3) -> rl (3)
        "import experiments.cli\n"
        "from rlhf_jax.sharding import put_batch\n"  # down: allowed
        "from rlhf_jax.data import records\n"  # its own part: allowed
    )
    wrong = _wrong_imports(pathlib.PurePath("data/pipeline.py"), source)
    assert len(wrong) == 3
    assert sorted(w.split(" imports ")[1] for w in wrong) == [
        "experiments.cli",
        "rlhf_jax.rl (3)",
        "rlhf_jax.world (4)",
    ]


def test_notebooks_import_the_library_only():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] != "code":
                continue
            # IPython magics ("%pip ...") become `pass`, so the cell parses as Python.
            lines = [
                line[: len(line) - len(line.lstrip())] + "pass"
                if line.lstrip()[:1] in ("%", "!")
                else line
                for line in "".join(cell["source"]).splitlines()
            ]
            for module in _imported_modules("\n".join(lines)):
                assert module.split(".")[0] != "experiments", f"{path.name} imports {module}"
