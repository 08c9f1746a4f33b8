"""The package's layering: each stage imports only the stages below it, and no cycle.

Stages, lowest first (a module may import its own stage and any stage below it; the
stages on one line are peers that do not import each other):

    core        errors, contract, atomic, cli, config, decision, preprocess, plotting, machine
    io          DICOM, NIfTI and SEG readers and writers
    records     the TFRecord schema, conversion, the tf.data input, the records pipeline
    datasets    RSNA-2019, CQ500            |  phantom   the synthetic head-CT cohort
    modeling    the network and its losses
    serving     loading, export, predict, the TF Serving client
    evaluation  metrics, scoring, the evaluate CLI
    training    the trainer and tf.distribute

Imports inside functions count too (a lazy import is still a dependency). The public CLI
modules at the top (`radnet_tf.train`, ...) and the package `__init__` may import anything.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "radnet_tf"
CORE = {
    "errors",
    "contract",
    "atomic",
    "cli",
    "config",
    "decision",
    "preprocess",
    "plotting",
    "machine",
}
STAGES = [
    CORE,
    {"io"},
    {"records"},
    {"datasets", "phantom"},
    {"modeling"},
    {"serving"},
    {"evaluation"},
    {"training"},
]
MAX_FUNCTION_LINES = 80


def _stage_of(parts):
    """Index in STAGES of a module given as its dotted parts below radnet_tf, or None
    for the CLI alias modules and the package itself."""
    for i, names in enumerate(STAGES):
        if parts and parts[0] in names:
            return i
    return None


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, tuple(p for p in parts if p != "__init__")


def _imports(path, parts):
    """radnet_tf modules a file imports, as dotted parts below radnet_tf."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "radnet_tf" or name.startswith("radnet_tf."):
                target = tuple(name.split(".")[1:])
                if target and (
                    PACKAGE.joinpath(*target).with_suffix(".py").exists()
                    or PACKAGE.joinpath(*target).is_dir()
                ):
                    yield target


def _graph():
    return {parts: set(_imports(path, parts)) for path, parts in _modules()}


def test_each_stage_imports_only_stages_below_it():
    bad = []
    for module, targets in _graph().items():
        own = _stage_of(module)
        if own is None:
            continue
        for target in targets:
            stage = _stage_of(target)
            if (
                stage is None
                or stage > own
                or (stage == own and target[0] != module[0] and len(STAGES[own]) > 1 and own != 0)
            ):
                bad.append(f"{'.'.join(module)} -> {'.'.join(target)}")
    assert bad == []


def test_no_import_cycle():
    graph = {m: {t for t in ts if t in _graph_keys()} for m, ts in _graph().items()}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert [" -> ".join(".".join(p) or "radnet_tf" for p in c) for c in cycles] == []


def _graph_keys():
    return {parts for _, parts in _modules()}


def test_no_function_is_longer_than_the_limit():
    long = []
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert long == []


def test_the_checks_see_a_violation(tmp_path):
    """The stage rule flags an upward import (guards the checker itself)."""
    assert _stage_of(("io", "dicom")) < _stage_of(("training", "train"))
    assert _stage_of(("train",)) is None
    assert _stage_of(("phantom", "cache")) == _stage_of(("datasets", "rsna"))
