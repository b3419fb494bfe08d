"""Architecture checks, read from the source with ``ast`` (nothing is imported):

1. import rules: dependencies point one way;
   - a stage module (``stages/<name>.py``) never imports another stage module;
   - commands (``plankton_transfer/cli``), ``bench`` and ``tools`` never import stage modules;
   - the library (``plankton_transfer`` outside ``cli``) never imports stages, commands,
     tools, bench or tests;
   - data handling (``plankton_transfer/data``) never imports the model registry
     (``plankton_transfer/models``);
2. dvc.yaml deps: every project module a stage imports, directly or not, is listed in that
   stage's ``deps`` (so a change there re-runs it), and every listed ``.py`` file exists and
   is imported by the stage (so a change elsewhere does not re-run it);
3. one source for each default: every field of the params dataclasses
   (``plankton_transfer.params.SECTIONS``) has a key in params.yaml and the other way round,
   and no dataclass default differs from params.yaml unless its line carries a comment
   ``# differs from params.yaml: <why>``.

    python -m tools.architecture        # prints every violation; exit status 1 if any

tests/test_architecture.py runs both on the project and on small synthetic trees.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plankton_transfer", "stages", "tools", "bench", "tests")
STAGE_COMMAND = re.compile(r"python\s+-m\s+(stages\.[A-Za-z_][A-Za-z0-9_]*)")


@dataclasses.dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. plankton_transfer.data.scan
    path: Path  # relative to the project root

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def find_modules(root: Path) -> dict[str, Module]:
    """Every Python module of the project's packages, by dotted name."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = Module(".".join(parts), rel)
    return modules


def imported_names(module: Module, root: Path) -> set[str]:
    """Dotted names a module imports (anywhere in it, TYPE_CHECKING blocks and functions included)."""
    tree = ast.parse((root / module.path).read_text(encoding="utf-8"), filename=str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_imports(module: Module, modules: dict[str, Module], root: Path) -> set[str]:
    """The project modules ``module`` imports directly, with the packages whose ``__init__`` runs."""
    found = set()
    for name in imported_names(module, root):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then a/b/c
            prefix = ".".join(parts[:i])
            if prefix in modules:
                found.add(prefix)
    found.discard(module.name)
    return found


def transitive_imports(start: str, modules: dict[str, Module], root: Path) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(project_imports(modules[name], modules, root) - seen)
    return seen


def layer(name: str) -> str:
    """stage | command | library | data | models | tools | bench | tests."""
    if name.startswith("stages.") and name != "stages":
        return "stage"
    if name == "plankton_transfer.cli" or name.startswith("plankton_transfer.cli."):
        return "command"
    if name.startswith("plankton_transfer"):
        return "library"
    return name.split(".")[0]


def import_violations(modules: dict[str, Module], root: Path) -> list[str]:
    """Every import that breaks a rule of the module docstring, as 'path: message'."""
    problems = []
    for name, module in sorted(modules.items()):
        for target in sorted(project_imports(module, modules, root)):
            rule = broken_rule(name, target)
            if rule:
                problems.append(f"{module.path}: imports {target}: {rule}")
    return problems


def broken_rule(source: str, target: str) -> str | None:
    src, dst = layer(source), layer(target)
    if src == "stage" and dst == "stage":
        return "a stage module never imports another stage module; move shared code into plankton_transfer"
    if src in ("command", "bench", "tools") and dst == "stage":
        return f"{src} code never imports stage modules; import the library (plankton_transfer) instead"
    if src == "library" and dst in ("stage", "command", "tools", "bench", "tests"):
        return f"the library never imports {dst} code; dependencies point from stages and commands to the library"
    is_data = source == "plankton_transfer.data" or source.startswith("plankton_transfer.data.")
    if is_data and (target == "plankton_transfer.models" or target.startswith("plankton_transfer.models.")):
        return "data handling never imports the model registry; pass what it needs (e.g. Preprocess) in"
    return None


def has_code(path: Path) -> bool:
    """False for a module that holds only a docstring (an empty package ``__init__``)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def stage_definitions(dvc_yaml: Path) -> dict[str, dict]:
    """Stages of dvc.yaml by name; a ``foreach`` stage keeps its ``do`` block."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")).get("stages") or {}
    return {name: (spec.get("do") if "foreach" in spec else spec) for name, spec in stages.items()}


def dep_violations(dvc_yaml: Path, modules: dict[str, Module], root: Path) -> list[str]:
    """Stages whose ``deps`` miss a project module they import, or list a stale ``.py`` file."""
    problems = []
    for stage, spec in stage_definitions(dvc_yaml).items():
        cmd = " ".join(spec["cmd"]) if isinstance(spec.get("cmd"), list) else str(spec.get("cmd", ""))
        entry_points = STAGE_COMMAND.findall(cmd)
        deps = {str(d) for d in spec.get("deps") or [] if isinstance(d, str)}
        listed_py = {d for d in deps if d.endswith(".py")}
        needed: set[str] = set()
        for entry in entry_points:
            if entry not in modules:
                problems.append(f"dvc.yaml: stage {stage} runs {entry}, which does not exist")
                continue
            needed |= {modules[m].path.as_posix() for m in transitive_imports(entry, modules, root)
                       if has_code(root / modules[m].path)}
        for path in sorted(needed - deps):
            problems.append(f"dvc.yaml: stage {stage} imports {path} but does not list it in deps")
        for path in sorted(listed_py - needed):
            reason = "does not exist" if not (root / path).is_file() else "is not imported by the stage"
            problems.append(f"dvc.yaml: stage {stage} lists {path} in deps, which {reason}")
    return problems


DIFFERS = "# differs from params.yaml:"


def field_lines(cls: type) -> dict[str, str]:
    """Each dataclass field's source line (to find a ``# differs from params.yaml`` comment)."""
    lines = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+([A-Za-z_][A-Za-z0-9_]*)\s*:", line)
        if match:
            lines.setdefault(match.group(1), line)
    return lines


def params_violations(params: dict, sections: dict[str, type]) -> list[str]:
    """Drift between params.yaml and the dataclasses that read it."""
    problems = []
    for name, cls in sections.items():
        values = params.get(name)
        if not isinstance(values, dict):
            problems.append(f"params.yaml: no '{name}' section for {cls.__name__}")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        lines = field_lines(cls)
        for key in sorted(set(fields) - set(values)):
            problems.append(f"params.yaml: {name}.{key} is missing ({cls.__name__} has the field)")
        for key in sorted(set(values) - set(fields)):
            problems.append(f"params.yaml: {name}.{key} is read by nothing ({cls.__name__} has no such field)")
        for key in sorted(set(fields) & set(values)):
            default = fields[key].default
            if default is dataclasses.MISSING or DIFFERS in lines.get(key, ""):
                continue
            if normalise(default) != normalise(values[key]):
                problems.append(f"{cls.__name__}.{key} defaults to {default!r} but params.yaml says {values[key]!r}; "
                                f"make them equal or say why with '{DIFFERS} ...'")
    return problems


def normalise(value):
    """Lists and tuples compare equal; ints and floats compare by value."""
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    from plankton_transfer.params import SECTIONS

    modules = find_modules(ROOT)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    problems = (import_violations(modules, ROOT) + dep_violations(ROOT / "dvc.yaml", modules, ROOT)
                + params_violations(params, SECTIONS))
    print("\n".join(problems) if problems else "architecture: import rules, dvc.yaml deps and params defaults hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
