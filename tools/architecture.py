"""Architecture checks, read from the source with ``ast`` (nothing is imported):

1. import rules: dependencies point one way;
   - a stage module (``stages/<name>.py``) never imports another stage module;
   - commands (``plankton_transfer/cli``), ``bench`` and ``tools`` never import stage modules;
   - the library (``plankton_transfer`` outside ``cli``) never imports stages, commands,
     tools, bench or tests;
   - data handling (``plankton_transfer/data``) never imports the model registry
     (``plankton_transfer/models``);
2. dvc.yaml deps: each stage's code deps are exactly the project modules it imports, directly
   or not (so a change there re-runs it, and a change elsewhere does not). ``--write``
   writes them into dvc.yaml; without it, any difference is reported. A stage that uses the
   backbone registry depends on its own backbone's module through the
   ``plankton_transfer/models/backbones/${item}.py`` line (the registry imports entries by
   name), and on what every entry imports;
3. one source for each default: every field of the params dataclasses
   (``plankton_transfer.params.SECTIONS``) has a key in params.yaml and the other way round,
   and no dataclass default differs from params.yaml unless its line carries a comment
   ``# differs from params.yaml: <why>``.

    python -m tools.architecture          # prints every violation; exit status 1 if any
    python -m tools.architecture --write  # writes each stage's code deps into dvc.yaml first

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


REGISTRY = "plankton_transfer.models.backbones"  # imports each backbone's module by name
PER_BACKBONE = "plankton_transfer/models/backbones/${item}.py"


def backbone_entries(modules: dict[str, Module]) -> set[str]:
    """The registry's entry modules (one per backbone; helpers start with _)."""
    prefix = REGISTRY + "."
    return {m for m in modules if m.startswith(prefix) and "." not in m[len(prefix):]
            and not m[len(prefix):].startswith("_")}


def stage_code_deps(entry: str, modules: dict[str, Module], root: Path, per_backbone: bool = False) -> list[str]:
    """The ``.py`` files (with code) that the stage module ``entry`` imports, directly or not;
    for a stage that builds its backbone (``per_backbone``: it lists its entry's
    ``${item}`` line), what every backbone entry imports too."""
    needed = transitive_imports(entry, modules, root)
    if per_backbone and REGISTRY in needed:
        entries = backbone_entries(modules)
        for name in entries:
            needed |= transitive_imports(name, modules, root)
        needed -= entries
    return sorted(modules[m].path.as_posix() for m in needed if has_code(root / modules[m].path))


def stage_entries(dvc_yaml: Path) -> dict[str, list[str]]:
    """Stage name -> the stage modules its command runs."""
    out = {}
    for stage, spec in stage_definitions(dvc_yaml).items():
        cmd = " ".join(spec["cmd"]) if isinstance(spec.get("cmd"), list) else str(spec.get("cmd", ""))
        out[stage] = STAGE_COMMAND.findall(cmd)
    return out


def generated_deps(dvc_yaml: Path, modules: dict[str, Module], root: Path) -> dict[str, list[str]]:
    deps = {}
    specs = stage_definitions(dvc_yaml)
    for stage, entries in stage_entries(dvc_yaml).items():
        per_backbone = PER_BACKBONE in (specs[stage].get("deps") or [])
        files: set[str] = set()
        for entry in entries:
            if entry in modules:
                files |= set(stage_code_deps(entry, modules, root, per_backbone))
        deps[stage] = sorted(files)
    return deps


def dep_violations(dvc_yaml: Path, modules: dict[str, Module], root: Path) -> list[str]:
    """Stages whose code deps differ from what they import (and entries that do not exist)."""
    problems = []
    generated = generated_deps(dvc_yaml, modules, root)
    for stage, spec in stage_definitions(dvc_yaml).items():
        for entry in stage_entries(dvc_yaml)[stage]:
            if entry not in modules:
                problems.append(f"dvc.yaml: stage {stage} runs {entry}, which does not exist")
        listed = {str(d) for d in spec.get("deps") or [] if isinstance(d, str) and d.endswith(".py") and "${" not in d}
        needed = set(generated[stage])
        for path in sorted(needed - listed):
            problems.append(f"dvc.yaml: stage {stage} imports {path} but does not list it in deps "
                            "(python -m tools.architecture --write)")
        for path in sorted(listed - needed):
            reason = "does not exist" if not (root / path).is_file() else "is not imported by the stage"
            problems.append(f"dvc.yaml: stage {stage} lists {path} in deps, which {reason} "
                            "(python -m tools.architecture --write)")
        per_model = "${item}" in str(spec.get("cmd", ""))
        uses_registry = any(REGISTRY in transitive_imports(e, modules, root) for e in stage_entries(dvc_yaml)[stage]
                            if e in modules)
        if per_model and uses_registry and PER_BACKBONE not in (spec.get("deps") or []):
            problems.append(f"dvc.yaml: stage {stage} builds a backbone but does not list {PER_BACKBONE}")
    return problems


def write_deps(dvc_yaml: Path, modules: dict[str, Module], root: Path) -> bool:
    """Rewrite each stage's code deps in dvc.yaml (comments and everything else kept); True if changed."""
    generated = generated_deps(dvc_yaml, modules, root)
    lines = dvc_yaml.read_text(encoding="utf-8").splitlines(keepends=True)
    out, stage, in_deps, indent, written = [], None, False, "", set()
    for line in lines:
        stage_match = re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line)
        if stage_match:
            stage, in_deps = stage_match.group(1), False
        elif re.match(r"^\S", line):
            stage, in_deps = None, False
        item = re.match(r"^(\s*)- (\S+\.py)\s*$", line)
        if stage in generated and re.match(r"^\s+deps:\s*$", line):
            in_deps = True
        elif in_deps and item and "${" not in item.group(2):
            if stage not in written:
                out += [f"{item.group(1)}- {path}\n" for path in generated[stage]]
                written.add(stage)
            continue
        elif in_deps and not re.match(r"^\s+- ", line):
            if stage not in written:  # a deps list without code deps yet: append them
                out += [f"{indent}- {path}\n" for path in generated[stage]]
                written.add(stage)
            in_deps = False
        if in_deps and re.match(r"^(\s+)- ", line):
            indent = re.match(r"^(\s+)- ", line).group(1)
        out.append(line)
    text = "".join(out)
    changed = text != dvc_yaml.read_text(encoding="utf-8")
    dvc_yaml.write_text(text, encoding="utf-8")
    return changed


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
    from plankton_transfer.params.every_section import SECTIONS

    args = sys.argv[1:] if argv is None else argv
    modules = find_modules(ROOT)
    if "--write" in args and write_deps(ROOT / "dvc.yaml", modules, ROOT):
        print("dvc.yaml: code deps written from the import graph")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    problems = (import_violations(modules, ROOT) + dep_violations(ROOT / "dvc.yaml", modules, ROOT)
                + params_violations(params, SECTIONS))
    print("\n".join(problems) if problems else "architecture: import rules, dvc.yaml deps and params defaults hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
