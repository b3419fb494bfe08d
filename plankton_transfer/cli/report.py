"""CI report: what a change did to the metrics, as markdown (`make report BASE=...`).

    python -m plankton_transfer.cli.report --base origin/main --out-dir report

Runs `dvc repro` (a no-op when nothing changed), then writes into ``--out-dir``:
- report.md: the params that changed, `dvc metrics diff` against the base (quality metrics
  first, timings folded away), this run's comparison table and the confusion matrices;
- images/: the confusion-matrix PNGs that report.md links to (relative links, which CML
  uploads when it posts the report);
- plots.html: `dvc plots diff` of the base and the workspace in one self-contained file
  (scripts inlined by .dvc/plots/offline.html, images inlined as data URIs).
The GitHub workflow (.github/workflows/report.yml) runs exactly this.
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from plankton_transfer.cli.common import refuse_pipeline_folder
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import write_text
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.data import DataParams

TIMING_KEYS = ("seconds", "per_s")


def dvc(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise UserError(f"dvc {' '.join(args)} failed: {last}")
    return proc.stdout


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def diff_table(diff: dict, keep) -> str:
    """A markdown table of `dvc metrics/params diff --json` entries whose key passes ``keep``."""
    rows = [(path, key, change) for path, entries in diff.items() for key, change in entries.items() if keep(key)]
    if not rows:
        return "_no changes_\n"
    lines = ["| file | key | base | new | change |", "|---|---|---:|---:|---:|"]
    for path, key, c in rows:
        lines.append(f"| {path} | `{key}` | {fmt(c.get('old'))} | {fmt(c.get('new'))} | {fmt(c.get('diff'))} |")
    return "\n".join(lines) + "\n"


def is_timing(key: str) -> bool:
    return any(t in key for t in TIMING_KEYS)


def copy_confusion_images(out_dir: Path) -> list[Path]:
    """Each model's test confusion matrix (plots/evaluate/<model>/confusion.png) as images/<model>_confusion.png."""
    images = sorted(Path("plots/evaluate").glob("*/confusion.png"))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    names = [Path("images") / f"{image.parent.name}_confusion.png" for image in images]
    for image, name in zip(images, names):
        shutil.copy(image, out_dir / name)
    return names


def report_markdown(base: str, params_diff: dict, metrics_diff: dict, compare_md: str, images: list[Path]) -> str:
    parts = [f"# Pipeline report: workspace against `{base}`\n", "## Params changed\n",
             diff_table(params_diff, lambda k: True), "\n## Metrics changed\n",
             diff_table(metrics_diff, lambda k: not is_timing(k))]
    timings = diff_table(metrics_diff, is_timing)
    parts.append(f"\n<details><summary>Timings (vary run to run)</summary>\n\n{timings}\n</details>\n")
    parts.append("\n## This run\n\n" + compare_md.split("\n", 1)[1].lstrip())
    parts.append("\n## Confusion matrices (test split)\n\n")
    parts += [f"![{image.stem}]({image.as_posix()})\n" for image in images]
    parts.append("\nInteractive curves and confusion matrices, base against workspace: `plots.html` "
                 "(opens offline).\n")
    return "".join(parts)


def self_contained_plots(base: str, out_file: Path) -> None:
    """`dvc plots diff` to one HTML file: scripts come inlined from the template, and each
    image is turned into a data URI, so the file works alone and offline."""
    with tempfile.TemporaryDirectory() as tmp:
        dvc("plots", "diff", base, "--out", tmp)
        html_dir = Path(tmp)
        html = (html_dir / "index.html").read_text(encoding="utf-8")

        def inline(match: re.Match) -> str:
            data = base64.b64encode((html_dir / match.group(1)).read_bytes()).decode()
            return f'src="data:image/png;base64,{data}"'

        html = re.sub(r'src="(static/[^"]+\.png)"', inline, html)
    write_text(out_file, html)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="HEAD~1", help="git revision to compare against")
    p.add_argument("--out-dir", type=Path, default=Path("report"))
    p.add_argument("--no-repro", action="store_true", help="report on the workspace as it is")
    params_argument(p)
    args = p.parse_args(argv)
    raw = section(DataParams, read_params(args.params), "data").raw if args.params.is_file() else None
    refuse_pipeline_folder("--out-dir", args.out_dir, raw)
    if not args.no_repro:
        dvc("repro")
    params_diff = json.loads(dvc("params", "diff", args.base, "--json") or "{}")
    metrics_diff = json.loads(dvc("metrics", "diff", args.base, "--json") or "{}")
    compare_md = Path("metrics/compare/compare.md").read_text(encoding="utf-8")
    images = copy_confusion_images(args.out_dir)
    text = report_markdown(args.base, params_diff, metrics_diff, compare_md, images)
    write_text(args.out_dir / "report.md", text)
    self_contained_plots(args.base, args.out_dir / "plots.html")
    print(f"report: {args.out_dir / 'report.md'}, {args.out_dir / 'plots.html'}")
    return args.out_dir / "report.md"


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
