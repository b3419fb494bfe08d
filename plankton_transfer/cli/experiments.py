"""Compare experiments: each model's key numbers across `dvc exp show`, in one narrow table
(not a pipeline stage; `make compare`).

One row per model and experiment, grouped by model, so a model's baseline and new test
accuracy sit one above the other; only the params that differ from the baseline are shown.
Fits 120 columns for the three default models.

    python -m plankton_transfer.cli.experiments                     # text, to the terminal
    python -m plankton_transfer.cli.experiments --md compare.md --csv compare.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import write_csv, write_text
from plankton_transfer.cli.report import dvc
from plankton_transfer.evaluation.metrics import HEADLINE

HEADLINE_FILE = "metrics/headline.json"  # written by the compare stage: evaluation/metrics.py HEADLINE


def dvc_experiments(extra: list[str]) -> list[dict]:
    return json.loads(dvc("exp", "show", "--json", *extra))


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def revisions(records: list[dict]) -> list[tuple[str, dict]]:
    """(label, data) for each baseline commit and its experiments, workspace left out."""
    out = []
    for record in records:
        if record["rev"] == "workspace" or not record.get("data"):
            continue
        out.append((f"{record.get('name') or record['rev'][:7]} (baseline)", record["data"]))
        for group in record.get("experiments") or []:
            for rev in group["revs"]:
                if rev.get("data"):
                    out.append((rev.get("name") or rev["rev"][:7], rev["data"]))
    return out


def params_of(data: dict) -> dict:
    return flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))


def model_metrics(data: dict) -> dict[str, dict]:
    """Per model, the headline numbers of one revision."""
    content = (data.get("metrics") or {}).get(HEADLINE_FILE) or {}
    return content.get("data") or {}


def comparison(records: list[dict]) -> pd.DataFrame:
    revs = revisions(records)
    if not revs:
        raise UserError("no experiments to compare; run dvc repro (or dvc exp run) and commit first")
    baseline = params_of(revs[0][1])
    rows = []
    for label, data in revs:
        changed = {k: v for k, v in params_of(data).items() if baseline.get(k) != v}
        for model, m in model_metrics(data).items():
            row = {"model": model, "experiment": label,
                   "changed params": " ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "-"}
            row.update({entry.key: m.get(entry.key) for entry in HEADLINE})
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["model"], kind="stable").reset_index(drop=True)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--md", type=Path, help="also write the table as markdown")
    p.add_argument("--csv", type=Path, help="also write the table as CSV")
    p.add_argument("--all-commits", action="store_true", help="every commit's experiments, not only HEAD's")
    args = p.parse_args(argv)
    table = comparison(dvc_experiments(["--all-commits"] if args.all_commits else []))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", max_colwidth=28))
    if args.md:
        write_text(args.md, table.to_markdown(index=False, floatfmt=".4f") + "\n")
    if args.csv:
        write_csv(args.csv, table)
    return table


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
