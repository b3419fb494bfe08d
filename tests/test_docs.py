"""The README and docs/ stay true to the code.

What a reader would copy from the documentation must work: every ``make`` target, every option
of a ``plankton-*`` command, every ``dvc exp run -S`` key and ``params.yaml`` snippet, every
``python -m`` module, script and linked page exists; the ``PLANKTON_*`` variables documented are
exactly those plankton_transfer/settings.py reads, with its defaults; and the output paths named
under metrics/ and plots/ are ones the pipeline writes. Fast: nothing is run but argparse.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 250
# Pages another change is writing: a link to one is checked once the page exists.
PENDING_PAGES = {DOCS / "coverage.md"}
# Files under metrics/ that no stage writes (make compare's table; ignored by git).
NOT_PIPELINE_OUTPUTS = {"metrics/experiments.md", "metrics/experiments.csv"}
PROJECT_NAME = "plankton-transfer"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---- reading the pages: code (fenced blocks and inline spans) and prose ----

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`]+)`")


@functools.cache
def split_page(path: Path) -> tuple[list[tuple[str, str]], str]:
    """([(language, block text)], the prose outside fenced blocks)."""
    blocks, prose, current, language = [], [], None, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            if current is None:
                current, language = [], line.strip().lstrip("`~").strip()
            else:
                blocks.append((language, "\n".join(current)))
                current = None
            continue
        (prose if current is None else current).append(line)
    assert current is None, f"{rel(path)}: a fenced code block is not closed"
    return blocks, "\n".join(prose)


def code_lines(path: Path) -> list[str]:
    """Every line of code on a page: fenced blocks line by line, inline spans whole."""
    blocks, prose = split_page(path)
    lines = [line for _, block in blocks for line in block.splitlines()]
    return lines + [span.replace("\n", " ") for span in INLINE.findall(prose)]


def commands(line: str) -> list[list[str]]:
    """The shell commands of one line of code, as words, without comments and leading VAR=value."""
    line = re.sub(r"(^|\s)#.*", "", line)
    found = []
    for part in re.split(r"&&|\|\||[;|]", line):
        try:
            words = shlex.split(part)
        except ValueError:  # unbalanced quotes in a fragment of prose
            words = part.split()
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            found.append(words)
    return found


def all_commands() -> list[tuple[str, list[str]]]:
    return [(rel(page), words) for page in PAGES for line in code_lines(page) for words in commands(line)]


# ---- what the code offers ----

@functools.cache
def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.M))


@functools.cache
def make_variable_commands() -> dict[str, str]:
    """Makefile variables passed to a console command: {"PREDICT_ARGS": "plankton-predict", ...}."""
    text = (ROOT / "Makefile").read_text()
    return {var: cmd for cmd, var in re.findall(r"^\t\s*(plankton-[\w-]+)\s+\$\((\w+)\)", text, flags=re.M)}


@functools.cache
def console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["scripts"])


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


@functools.cache
def command_options(command: str) -> frozenset[str]:
    """Every option string of a console command, from the parser its ``main`` builds (nothing runs:
    the parser is taken at its ``parse_args`` call)."""
    module = importlib.import_module(console_scripts()[command].split(":")[0])

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        module.main([])
    except Captured as captured:
        return frozenset(captured.parser._option_string_actions)
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{command}: main() built no argument parser")


@functools.cache
def params_sections() -> tuple[dict[str, type], tuple[str, ...]]:
    from plankton_transfer.params.every_section import SECTIONS, TOP_LEVEL_LISTS

    return SECTIONS, TOP_LEVEL_LISTS


def params_key_problem(key: str) -> str | None:
    """Why ``section.key`` (or a top-level list) is not a params field, or None."""
    sections, lists = params_sections()
    if "." not in key:
        return None if key in lists else f"{key!r} is not a top-level params list ({', '.join(lists)})"
    section, field = key.split(".", 1)
    if section not in sections:
        return f"{key!r}: no params section {section!r}"
    fields = {f.name for f in dataclasses.fields(sections[section])}
    return None if field in fields else f"{key!r}: {section} has no field {field!r} ({', '.join(sorted(fields))})"


def settings_variables() -> set[str]:
    """The PLANKTON_* names plankton_transfer/settings.py spells as strings (the variables it reads)."""
    import ast

    tree = ast.parse((ROOT / "plankton_transfer" / "settings.py").read_text())
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"PLANKTON_[A-Z0-9_]+", node.value)}


# ---- the tests ----

def test_the_readme_is_short_and_links_every_docs_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    _, prose = split_page(README)
    linked = {(ROOT / target.split("#")[0]).resolve() for target in re.findall(r"\]\(([^)\s]+)\)", prose)
              if not re.match(r"[a-z]+:", target)}
    unlinked = [rel(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README's 'More' list does not link: {unlinked}"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    _, prose = split_page(path)
    anchors = set()
    for title in re.findall(r"^#+\s+(.*)$", prose, flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_link_leads_to_a_file_or_heading_that_exists(page):
    _, prose = split_page(page)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if resolved in PENDING_PAGES and not resolved.exists():
            continue
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{rel(page)}: broken links {broken}"


def test_every_make_target_exists():
    wrong = [(page, " ".join(words)) for page, words in all_commands()
             if words[0] == "make" and len(words) > 1 and not words[1].startswith("-") and "=" not in words[1]
             and words[1] not in make_targets()]
    assert not wrong, f"make targets the Makefile lacks: {wrong}"


def documented_options() -> list[tuple[str, str, str]]:
    """(page, command, option) for every option given to a plankton-* command, directly or in
    a Makefile variable that make passes to one (``make predict PREDICT_ARGS="--model ..."``)."""
    found = []
    for page, words in all_commands():
        if re.fullmatch(r"plankton-[\w-]+", words[0]) and words[0] != PROJECT_NAME:
            found += [(page, words[0], w.split("=")[0]) for w in words[1:] if w.startswith("-")]
        if words[0] == "make":
            for word in words[1:]:
                var, _, value = word.partition("=")
                if var in make_variable_commands():
                    command = make_variable_commands()[var]
                    found += [(page, command, w.split("=")[0]) for w in shlex.split(value) if w.startswith("-")]
    return found


def test_every_plankton_command_and_option_in_the_docs_exists():
    commands_used = {command for _, command, _ in documented_options()}
    commands_used |= {words[0] for _, words in all_commands()
                      if re.fullmatch(r"plankton-[\w-]+", words[0]) and words[0] != PROJECT_NAME}
    unknown = sorted(commands_used - set(console_scripts()))
    assert not unknown, f"commands pyproject.toml does not install: {unknown}"
    assert {"plankton-predict", "plankton-export"} <= commands_used  # the check reads what it should
    wrong = sorted({(page, command, option) for page, command, option in documented_options()
                    if option not in command_options(command)})
    assert not wrong, f"options the commands do not have: {wrong}"


def test_every_dvc_exp_run_setting_is_a_params_field():
    settings, problems = [], []
    for page, words in all_commands():
        if words[:3] == ["dvc", "exp", "run"] or words[0] == "sbatch":
            settings += [(page, words[i + 1]) for i, w in enumerate(words[:-1]) if w in ("-S", "--set-param")]
    assert settings, "no dvc exp run -S found: the parsing broke"
    for page, setting in settings:
        key, equals, _ = setting.partition("=")
        problem = params_key_problem(key) if equals else f"{setting!r} has no '='"
        if problem:
            problems.append(f"{page}: {problem}")
    assert not problems, problems


def test_every_params_yaml_snippet_names_real_sections_and_fields():
    problems, snippets = [], 0
    for page in PAGES:
        for language, block in split_page(page)[0]:
            if language not in ("yaml", "yml"):
                continue
            snippets += 1
            data = yaml.safe_load(block) or {}
            for name, value in data.items():
                keys = [f"{name}.{field}" for field in value] if isinstance(value, dict) else [name]
                problems += [f"{rel(page)}: {p}" for key in keys if (p := params_key_problem(key))]
    assert snippets, "no yaml blocks found: the parsing broke"
    assert not problems, problems


def test_every_module_and_script_the_docs_run_exists():
    missing = []
    for page, words in all_commands():
        program = Path(words[0]).name
        if program in ("python", "python3", "torchrun") and "-m" in words[1:-1]:
            module = words[words.index("-m") + 1]
            if "<" in module:  # stages.<stage>: some module of that form
                pattern = re.sub(r"<[^>]*>", "*", module).replace(".", "/")
                if not list(ROOT.glob(pattern + ".py")):
                    missing.append(f"{page}: no module like {module}")
            elif importlib.util.find_spec(module) is None:
                missing.append(f"{page}: module {module}")
        elif program in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
            if not (ROOT / words[1]).is_file():
                missing.append(f"{page}: script {words[1]}")
        elif program in ("bash", "sbatch"):
            scripts = [w for w in words[1:] if w.endswith((".sh", ".sbatch"))]
            missing += [f"{page}: script {s}" for s in scripts if not (ROOT / s).is_file()]
    assert not missing, missing


def test_the_documented_environment_variables_are_exactly_those_settings_reads():
    documented = set()
    for page in PAGES:
        documented |= set(re.findall(r"\bPLANKTON_[A-Z0-9_]*[A-Z0-9]\b", page.read_text(encoding="utf-8")))
    read = settings_variables()
    assert read, "settings.py spells no PLANKTON_* variable: the parsing broke"
    assert documented - read == set(), f"documented but not read by settings.py: {sorted(documented - read)}"
    assert read - documented == set(), f"read by settings.py but documented nowhere: {sorted(read - documented)}"


def test_each_variable_is_really_read_and_its_documented_default_is_the_code_default():
    from plankton_transfer.errors import UserError
    from plankton_transfer.settings import RunSettings, run_settings

    for variable in settings_variables():  # a bad value of each must be refused, naming it
        with pytest.raises(UserError, match=variable):
            run_settings({variable: "not-a-valid-value"})
    table = dict(re.findall(r"^\|\s*`(PLANKTON_\w+)`\s*\|\s*`([^`]*)`", (DOCS / "running.md").read_text(encoding="utf-8"),
                            flags=re.M))
    assert set(table) == settings_variables(), "docs/running.md's table must list every variable with its default"
    defaults = dataclasses.asdict(RunSettings())
    for variable, default in table.items():
        assert str(defaults[variable.removeprefix("PLANKTON_").lower()]) == default, variable
        assert run_settings({}) == run_settings({variable: default}), variable


def expand(path: str) -> list[str]:
    """``a/{b,c}.md`` -> ``a/b.md``, ``a/c.md``."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [p for option in match.group(1).split(",") for p in expand(path[:match.start()] + option + path[match.end():])]


def test_every_output_path_named_under_metrics_and_plots_is_one_the_pipeline_writes():
    models = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    missing, named = [], 0
    for page in PAGES:
        for line in code_lines(page):
            for path in re.findall(r"(?<![\w./-])((?:metrics|plots)/[^\s`'\",;:()\[\]]*)", line):
                path = path.rstrip(".")
                if path in NOT_PIPELINE_OUTPUTS:
                    continue
                named += 1
                for concrete in expand(path):
                    for model in models:
                        candidate = concrete.replace("<model>", model)
                        if not list(ROOT.glob(candidate.rstrip("/"))):
                            missing.append(f"{rel(page)}: {path}")
    assert named > 20, "few output paths found: the parsing broke"
    assert not missing, f"paths no stage writes (run dvc repro if the workspace is stale): {sorted(set(missing))}"


def test_the_gpu_page_names_every_slurm_script():
    text = (DOCS / "gpu-slurm.md").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (ROOT / "slurm").glob("*.sbatch"))
    assert scripts and all(f"slurm/{name}" in text for name in scripts), scripts
