"""Data flows one way through the package: no module imports a module of a higher layer (imports
inside functions included). The layers are the README's import-graph picture; docs/package.md's
module table names every module. The evidence (``experiments/``) sits above the package: it may import
``cmcr_lite``'s public names, never the reverse."""
import ast

from cmcr_lite.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "cmcr_lite"
# lowest first; a module may import its own layer and the ones before it
LAYERS = [
    ("foundations", ["classes", "runtime", "metrics"]),
    ("data", ["paths", "data"]),
    ("models", ["models"]),
    ("losses", ["losses"]),
    ("methods", ["distillation", "cmcr", "gradients", "teacher", "theory"]),
    ("loops", ["pretrain", "downstream"]),
    ("analysis and notebooks", ["analysis", "viz", "notebook"]),
]
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        yield rel, path


def top(dotted: str) -> str:
    """'cmcr_lite.data.pipeline' -> 'data' (the package's first level)."""
    return dotted.split(".")[1]


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cmcr_lite."):
            yield node.module, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module == "cmcr_lite":
            for alias in node.names:
                yield f"cmcr_lite.{alias.name}", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cmcr_lite."):
                    yield alias.name, node.lineno


def test_every_module_has_a_layer():
    missing = sorted({rel.parts[0].removesuffix(".py") for rel, _ in modules()} - set(LAYER_OF))
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for rel, path in modules():
        own = LAYER_OF[rel.parts[0].removesuffix(".py")]
        for name, line in imported_modules(path):
            if LAYER_OF[top(name)] > own:
                bad.append(f"cmcr_lite/{rel}:{line} ({LAYERS[own][0]}) imports {name} ({LAYERS[LAYER_OF[top(name)]][0]})")
    assert not bad, "\n".join(bad)


def test_module_table_names_every_module_and_the_picture_every_layer():
    table = (REPO_ROOT / "docs" / "package.md").read_text()
    for rel, _ in modules():
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        shown = f"`{rel.as_posix()}`" in table or f"`{rel.parts[0]}/`" in table
        assert shown, f"docs/package.md's module table does not name cmcr_lite/{rel}"
    readme = (REPO_ROOT / "README.md").read_text()
    picture = readme[readme.index("## The package"):readme.index("## Tests and benchmarks")]
    for layer, _ in LAYERS:
        assert layer in picture and layer in table, f"the import graph lacks the layer {layer!r}"


EXPERIMENTS = REPO_ROOT / "experiments"


def test_the_package_never_imports_the_experiments():
    bad = []
    for rel, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"cmcr_lite/{rel}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "experiments"]
    assert not bad, "\n".join(bad)


def test_the_experiments_import_only_public_names_of_the_package():
    """No ``_private`` name of ``cmcr_lite`` (or of another experiment module) is imported by an experiment."""
    bad = []
    for path in sorted(EXPERIMENTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("cmcr_lite", "experiments"):
                bad += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_")]
    assert not bad, "\n".join(bad)
