"""Pick the images worth labelling next (``plankton-select``; the active-learning loop's step, not a pipeline stage).

    plankton-select --model efficientnet_lite0 --input cruise-42/ --out results/round1 -n 200
    plankton-select --model efficientnet_lite0 --input cruise-42/ --out results/round2 -n 200 \
        --labelled exports/round1
    plankton-select --model models/alexnet.pt --input export_1234/ --out results/export_1234 -n 200 --strategy entropy

The loop (docs/active-learning.md): plankton-select -> import the upload into EcoTaxa ->
validate -> export -> point data.raw at the export -> dvc exp run (or dvc repro) -> again.
A command, not a DVC stage: the pool is new field data outside the pipeline's tracked inputs,
and what it writes is acted on by a person in EcoTaxa, whose labels come back through data.raw.

--model, --input, --input-type, --out, --taxon-names, --device, --batch-size, --workers,
--models-dir, --params: as plankton-predict (the same code, cli/predict.py).
--input:    the pool: an image folder, an unzipped EcoTaxa export (its validated objects are
            labelled already and left out; predicted, dubious and unclassified ones are the
            pool) or a folder of IFCB bins.
--object-id-prefix: as plankton-predict's, but an image folder's default is the pool
            folder's name + '_' (predict: the --out folder's), so an image keeps its
            EcoTaxa object_id from round to round.
--strategy: random | least_confidence | margin (default; "breaking ties") | entropy |
            kcenter | cluster | unknown_first (plankton_transfer/active/strategies.py).
-n/--count: how many images to pick (refused, with the number of usable images, when the
            pool holds fewer).
--seed:     for random and cluster (default 0).
--features-cache: where the pool's features are kept (default: .plankton-cache/ beside the
            --out folder); one folder per feature path (backbone, weights, input recipe),
            so a retrained head, another strategy or count reuse them (data/feature_cache.py).
--labelled: what is labelled already. An EcoTaxa export (the project exported after the last
            round): its validated objects leave the pool (matched by object_id) and, for
            kcenter, are the labelled set. For kcenter also a features folder of the
            pipeline (data/features/<model>/: the training images) or an image folder. An
            EcoTaxa pool's own validated objects always count as labelled. With nothing
            labelled, k-center starts from the image nearest the pool's mean.
--unknown-score: for unknown_first: by default the model's unknown detector (the openset
            stage's score and fit, <model>.unknown.pt beside the model file), else energy; msp
            and energy work from the head alone, mahalanobis and vim only through the detector.
--out:      the results folder, as plankton-predict's: predictions.csv (every pool image:
            predict's columns plus selected, selection_rank and the strategy's value), the
            EcoTaxa upload ecotaxa_<folder>.zip with the picked images only (status predicted,
            the model's guess as category, object_classif_score, object_select_rank,
            object_select_<value>) and run.json (command plankton-select).
Exit:       0 when the images were picked; 2 with one line otherwise.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from plankton_transfer.active.strategies import STRATEGIES, UNCERTAINTY, check_n, select
from plankton_transfer.cli.predict import add_model_arguments, pretrained_settings, prepare, whole_number
from plankton_transfer.data.ecotaxa import STATUS_COLUMN, read_rows
from plankton_transfer.data.feature_cache import FeatureCache, item_key
from plankton_transfer.data.predictions import PredictionRun, object_id_of, write_results
from plankton_transfer.data.sources import KINDS, Inputs, Item, list_inputs, readable
from plankton_transfer.data.split_files import SPLITS
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.evaluation.openset import HEAD_SCORES, SCORES, Scorers
from plankton_transfer.models.unknown import UnknownDetector, detector_path
from plankton_transfer.evaluation.summary import file_sha256
from plankton_transfer.models.inference import classify_features, features_fingerprint, load_predictor, result_table
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.provenance import FeatureMeta, load_meta
from plankton_transfer.records import plain

CACHE_FOLDER = ".plankton-cache"
VALIDATED = "validated"
RANKED = ("random", *UNCERTAINTY, "unknown_first")  # a value for every pool image: the whole pool is ranked
VALUE_COLUMNS = {"random": "random_priority", "least_confidence": "least_confidence", "margin": "margin",
                 "entropy": "entropy", "kcenter": "kcenter_distance", "cluster": "cluster_distance"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, prefix_from="input")
    p.add_argument("--strategy", choices=STRATEGIES, default="margin", help="how to pick (default: margin)")
    p.add_argument("-n", "--count", type=whole_number(1), required=True, help="how many images to pick")
    p.add_argument("--seed", type=int, default=0, help="for random and cluster")
    p.add_argument("--features-cache", type=Path,
                   help=f"where the pool's features are kept (default: {CACHE_FOLDER}/ beside the --out folder)")
    p.add_argument("--labelled", type=Path, help="what is labelled already: an EcoTaxa export (its validated objects "
                                                 "leave the pool); for kcenter also a features folder "
                                                 "(data/features/<model>) or an image folder")
    p.add_argument("--unknown-score", choices=SCORES, help="unknown_first's score (default: the model's unknown detector, "
                                                           "<model>.unknown.pt from the openset stage, else energy)")
    p.add_argument("--top-k", type=whole_number(1), default=3, help="classes listed per image in predictions.csv")
    return p.parse_args(argv)


# ---- choosing: the strategies on the pool's features ----

class UnknownScorer(Protocol):
    def score(self, name: str, x: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass
class Choice:
    picked: np.ndarray  # rows of the pool's features, best first
    values: np.ndarray  # the strategy's value of every row; NaN where it has none (kcenter, cluster: unpicked rows)
    column: str  # the value's name (predictions.csv column; object_select_<column> in the upload)

    @property
    def picked_values(self) -> np.ndarray:
        return self.values[self.picked]


def value_column(strategy: str, unknown_score: str = "energy") -> str:
    return f"unknown_{unknown_score}" if strategy == "unknown_first" else VALUE_COLUMNS[strategy]


def choose(model: ModelFile, features: np.ndarray, strategy: str, n: int, *, labelled: np.ndarray | None = None,
           seed: int = 0, scorer: UnknownScorer | None = None, unknown_score: str = "energy") -> Choice:
    """The ``n`` rows of ``features`` (the pool) that ``strategy`` picks, by the model's calibrated
    probabilities (uncertainty strategies), the features (kcenter from ``labelled``, cluster) or
    an unknown score (unknown_first: ``scorer.score(unknown_score, features)``; default scorer:
    the model's head alone, Scorers.from_head). Bad input raises a one-line ValueError."""
    features = np.asarray(features)
    n = check_n(n, len(features))
    column = value_column(strategy, unknown_score)
    values = np.full(len(features), np.nan)
    if strategy not in RANKED:
        picked, picked_values = select(strategy, n, features=features, labelled_features=labelled, seed=seed)
        values[picked] = picked_values
        return Choice(picked, values, column)
    proba = model.probabilities(features) if strategy in UNCERTAINTY else None
    score = None
    if strategy == "unknown_first":
        scorer = scorer or Scorers.from_head(model.head.weight.numpy(), model.head.bias.numpy(), model.temperature)
        score = scorer.score(unknown_score, features)
    order, ordered = select(strategy, len(features), proba=proba, unknown_score=score, seed=seed,
                            features=features if strategy == "random" else None)
    values[order] = ordered
    return Choice(order[:n], values, column)


# ---- the pool and its features ----

def annotation_statuses(export: Path) -> dict[str, str]:
    """{object_id: its main row's object_annotation_status, lower case} of an EcoTaxa export
    (the first listing of an id wins, as in the pool's items)."""
    rows, _ = read_rows(export)
    statuses: dict[str, str] = {}
    for row in rows:
        if row.main and row.object_id:
            statuses.setdefault(row.object_id, row.values.get(STATUS_COLUMN, "").strip().lower())
    return statuses


def leave_out(inputs: Inputs, out: list[bool], reason: str) -> tuple[Inputs, list[Item]]:
    """(``inputs`` without the items flagged in ``out``, counted as ignored for ``reason``; the
    flagged items that can be read)."""
    ignored = collections.Counter(inputs.ignored)
    if any(out):
        ignored[reason] += sum(out)
    kept = dataclasses.replace(inputs, items=[it for it, o in zip(inputs.items, out) if not o], ignored=ignored)
    return kept, [it for it, o in zip(inputs.items, out) if o and not it.error]


def pool_and_validated(inputs: Inputs) -> tuple[Inputs, list[Item]]:
    """An EcoTaxa export's validated objects are labelled already: (the rest, as the pool; the
    validated ones that can be read). Other inputs are all pool."""
    if inputs.kind != "ecotaxa":
        return inputs, []
    status = annotation_statuses(inputs.root)
    return leave_out(inputs, [status.get(item.id) == VALIDATED for item in inputs.items],
                     "validated objects (already labelled)")


@dataclasses.dataclass
class Extracted:
    features: dict[int, np.ndarray]  # item index -> float16 row
    errors: dict[int, str]  # item index -> why it could not be used
    cached: int  # rows read from the cache
    extracted: int  # rows the backbone computed now
    seconds: float
    device: str  # where they were computed ("" when nothing was)


class Extractor:
    """The model's feature path, built on first use only (a pool read wholly from the cache needs none)."""

    def __init__(self, model: ModelFile, args: argparse.Namespace, device: str, workers: int) -> None:
        self.model, self.args, self.device, self.workers = model, args, device, workers
        self.predictor = None

    def __call__(self, items: list[Item]) -> tuple[dict[int, np.ndarray], dict[int, str], float]:
        if self.predictor is None:
            self.predictor = load_predictor(self.model, pretrained_settings(self.args.params), self.device)
        return classify_features(self.predictor, items, self.args.batch_size, self.workers)


def features_of(items: list[Item], cache: FeatureCache, extract) -> Extracted:
    """Every usable item's features: from the cache when it holds them, else extracted (and added)."""
    keys = [item_key(item) for item in items]
    found = cache.lookup(keys)
    errors = {i: item.error for i, item in enumerate(items) if item.error}
    todo = [i for i in range(len(items)) if i not in found and i not in errors]
    features = dict(found)
    seconds, device = 0.0, ""
    if todo:
        new, failed, seconds = extract([items[i] for i in todo])
        device = str(getattr(getattr(extract, "predictor", None), "device", ""))
        errors.update({todo[j]: why for j, why in failed.items()})
        features.update({todo[j]: row for j, row in new.items()})
        store = [j for j in sorted(new) if keys[todo[j]] is not None]
        if store:
            try:
                cache.add([keys[todo[j]] for j in store], [items[todo[j]].id for j in store],
                          np.stack([new[j] for j in store]))
            except (OSError, UserError) as err:  # a read-only or full cache costs time later, not this selection
                print(f"warning: the features were not cached in {readable(str(cache.folder))} ({err}); the next run "
                      "extracts them again", file=sys.stderr)
    return Extracted(features, errors, len(found), len(todo) - sum(1 for i in todo if i in errors), seconds, device)


def same(a, b) -> bool:
    return json.dumps(plain(a), sort_keys=True, default=str) == json.dumps(plain(b), sort_keys=True, default=str)


def feature_store_rows(folder: Path, model: ModelFile) -> np.ndarray:
    """Every split's rows of a pipeline features folder, refused unless its features are this model's."""
    meta: FeatureMeta = load_meta(folder)
    if (meta.backbone != model.backbone or meta.weights.sha256 != model.weights.sha256
            or meta.weights.init_seed != model.weights.init_seed or not same(meta.input, model.input)
            or meta.feature_dim != model.feature_dim or model.backbone_state is not None):
        tuned = " (a fine-tuned backbone)" if model.backbone_state else ""
        raise UserError(f"--labelled {folder} holds {meta.backbone} features of other weights or another input "
                        f"recipe than the model {model.name}'s{tuned}; give the features folder of the model's own "
                        "extract stage, or labelled images")
    parts = [np.load(folder / f"{s}.npy", mmap_mode="r") for s in SPLITS if (folder / f"{s}.npy").is_file()]
    return np.concatenate([np.asarray(p, dtype=np.float16) for p in parts])


@dataclasses.dataclass
class Labelled:
    """What ``--labelled`` names."""

    what: str  # in words, for the summary and run.json
    rows: np.ndarray | None = None  # feature rows given as such (a features folder)
    items: list[Item] = dataclasses.field(default_factory=list)  # labelled images (kcenter extracts their features)
    object_ids: set[str] = dataclasses.field(default_factory=set)  # validated EcoTaxa objects: never in the pool


def labelled_source(path: Path, model: ModelFile) -> Labelled:
    """--labelled: a features folder of the pipeline, an EcoTaxa export (its validated objects)
    or any other input (all its images)."""
    if (path / "meta.json").is_file() and any((path / f"{s}.npy").is_file() for s in SPLITS):
        rows = feature_store_rows(path, model)
        return Labelled(f"{len(rows)} rows of the features folder {readable(str(path))}", rows=rows)
    inputs = list_inputs(path)
    if inputs.kind == "ecotaxa":
        status = annotation_statuses(inputs.root)
        ids = {object_id for object_id, s in status.items() if s == VALIDATED}
        _, items = pool_and_validated(inputs)
        return Labelled(f"{len(ids)} validated objects of the export {readable(str(path))}", items=items,
                        object_ids=ids)
    items = [item for item in inputs.items if not item.error]
    return Labelled(f"{len(items)} images of {readable(str(path))} ({KINDS[inputs.kind]})", items=items)


def check_paths(args: argparse.Namespace, cache_root: Path) -> None:
    """Refuse, before any work, a cache or --labelled that the results folder would hold, and a
    cache inside the input (field data is only read)."""
    out = args.out.resolve()
    for option, path in (("--labelled", args.labelled), ("--features-cache", cache_root)):
        if path is not None and (path.resolve() == out or path.resolve().is_relative_to(out)):
            raise UserError(f"{option} {path} lies inside --out {args.out}, which is replaced whole; put it elsewhere "
                            "(nothing was changed)")
    if args.input.is_dir() and cache_root.resolve().is_relative_to(args.input.resolve()):
        raise UserError(f"--features-cache {cache_root} lies inside the input {args.input}; keep it outside the field "
                        "data (nothing was changed)")
    if args.labelled is not None and not args.labelled.exists():
        raise UserError(f"--labelled {args.labelled} not found; give a features folder (data/features/<model>) or an "
                        "EcoTaxa export or image folder of labelled images")


def usable_message(count: int, usable: int, total: int, errors: dict[int, str], items: list[Item],
                   decoded: bool = True) -> str:
    """Why ``count`` images cannot be picked: how many the pool has (``decoded``: after reading
    every image; before, only the errors known from the listing are counted)."""
    failed = total - usable
    first = next(iter(sorted(errors.items())), None)
    why = f" ({failed} cannot be used, e.g. {readable(items[first[0]].file)}: {first[1]})" if first else ""
    if not usable:
        return f"none of the {total} pool images can be used{why}; nothing to select"
    what = f"{usable} usable image{'s' if usable != 1 else ''} of {total}" if decoded else \
        f"{usable} image{'s' if usable != 1 else ''}"
    return f"--count {count} but the pool holds only {what}{why}; ask for at most {usable}"


# ---- the command ----

def unknown_scorer(args: argparse.Namespace, ready) -> tuple[Scorers | None, str]:
    """unknown_first's scorer and score: the model's unknown detector (the openset stage's
    choice, or the asked score when it is the detector's), else a score of the head alone."""
    path = detector_path(ready.path)
    if path.is_file():
        detector = UnknownDetector.load_for(path, ready.model)
        if args.unknown_score in (None, detector.score):
            return detector.scorers(ready.model), detector.score
    score = args.unknown_score or "energy"
    if score not in HEAD_SCORES:
        raise UserError(f"--unknown-score {score} needs the model's training features, which only its unknown detector "
                        f"holds ({path}: {'another score' if path.is_file() else 'not found'}; dvc repro writes it); "
                        f"use {' or '.join(HEAD_SCORES)} (nothing was changed)")
    return None, score


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    cache_root = args.features_cache or args.out.parent / CACHE_FOLDER
    check_paths(args, cache_root)
    ready = prepare(args, prefix_from="input")  # an image keeps its object id from round to round
    model, prefix = ready.model, ready.id_prefix
    scorer, unknown_score = unknown_scorer(args, ready) if args.strategy == "unknown_first" else (None, "")
    pool, validated = pool_and_validated(ready.inputs)
    given = labelled_source(args.labelled, model) if args.labelled is not None else None
    if given is not None and given.object_ids:
        pool, _ = leave_out(pool, [object_id_of(item, pool.kind, prefix) in given.object_ids for item in pool.items],
                            "validated in the --labelled export")
    total = len(pool.items)
    if not total:
        raise UserError(f"every image of {readable(str(args.input))} is labelled already (validated in the export"
                        f"{' or in --labelled' if given is not None else ''}); nothing is left to label")
    known_errors = {i: item.error for i, item in enumerate(pool.items) if item.error}
    if args.count > total - len(known_errors):
        raise UserError(usable_message(args.count, total - len(known_errors), total, known_errors, pool.items,
                                       decoded=False))

    labelled_rows, labelled_items, labelled_what = None, [], []
    if args.strategy == "kcenter":
        if validated:
            labelled_what.append(f"{len(validated)} validated objects of the pool's export")
        if given is not None:
            labelled_rows, labelled_items = given.rows, given.items
            labelled_what.append(given.what)
        labelled_items = validated + labelled_items
    elif given is not None:
        labelled_what.append(given.what)
        if not given.object_ids:
            print(f"note: --labelled is used by the kcenter strategy only, unless it is an EcoTaxa export (whose "
                  f"validated objects leave the pool); ignored for {args.strategy}", file=sys.stderr)

    cache = FeatureCache(cache_root, features_fingerprint(model), model.feature_dim, model.backbone)
    cache.check()
    extractor = Extractor(model, args, ready.device, ready.workers)
    got = features_of(pool.items + labelled_items, cache, extractor)
    usable = sorted(i for i in got.features if i < total)
    errors = {i: why for i, why in got.errors.items() if i < total}
    if args.count > len(usable):
        raise UserError(usable_message(args.count, len(usable), total, errors, pool.items))
    x = np.stack([got.features[i] for i in usable])
    labelled = [got.features[i] for i in range(total, total + len(labelled_items)) if i in got.features]
    if labelled_rows is not None or labelled:
        labelled_x = np.concatenate([r for r in (labelled_rows, np.stack(labelled) if labelled else None)
                                     if r is not None])
    else:
        labelled_x = None

    try:
        choice = choose(model, x, args.strategy, args.count, labelled=labelled_x, seed=args.seed, scorer=scorer,
                        unknown_score=unknown_score or "energy")
    except ValueError as err:
        raise UserError(f"{args.strategy}: {err}") from None
    table = result_table(model, pool.items, dict(zip(usable, model.probabilities(x))), errors, args.top_k)
    rank = np.zeros(total, dtype=np.int64)
    rank[np.asarray(usable)[choice.picked]] = np.arange(1, len(choice.picked) + 1)
    values = np.full(total, np.nan)
    values[usable] = choice.values
    table.insert(len(table.columns) - 1, "selected", rank > 0)
    table.insert(len(table.columns) - 1, "selection_rank", pd.array(np.where(rank > 0, rank, None), dtype="Int64"))
    table.insert(len(table.columns) - 1, choice.column, values)
    column = f"object_select_{choice.column}"
    extra = [{"object_select_rank": int(r), column: float(v)} if r else {} for r, v in zip(rank, values)]

    settings = {"strategy": args.strategy, "count": args.count, "seed": args.seed, "top_k": args.top_k,
                "batch_size": args.batch_size, "features_cache": readable(str(cache.folder)),
                "features_cached": got.cached, "features_extracted": got.extracted,
                "device": got.device or "none (every feature from the cache)",
                "labelled": "; ".join(labelled_what),
                "labelled_rows": 0 if labelled_x is None else len(labelled_x)}
    if args.strategy == "unknown_first":
        settings["unknown_score"] = unknown_score
    run = PredictionRun(command="plankton-select", model=model.name, model_file=str(ready.path),
                        model_sha256=file_sha256(ready.path), input=readable(str(args.input)), input_kind=pool.kind,
                        images=len(usable), failed=len(errors), ignored=dict(pool.ignored), ecotaxa_objects=0,
                        settings=settings)
    upload, problems = write_results(args.out, table, pool, run, ready.taxon_names, prefix,
                                     model.input.image, {"object_select_rank": "[f]", column: "[f]"}, extra,
                                     upload=list(rank > 0))
    for problem in problems[:10]:
        print(f"warning: {upload}: {problem}", file=sys.stderr)
    print("\n".join(summary_lines(args, model.name, pool, len(usable), errors, got, choice, cache, upload,
                                  labelled_x)))
    return table


def summary_lines(args: argparse.Namespace, name: str, pool: Inputs, usable: int, errors: dict[int, str],
                  got: Extracted, choice: Choice, cache: FeatureCache, upload: Path,
                  labelled: np.ndarray | None) -> list[str]:
    ignored = sum(pool.ignored.values())
    details = ", ".join(f"{reason} {n}" for reason, n in sorted(pool.ignored.items()) if n)
    picked = choice.picked_values
    span = f"{picked.min():.4g} to {picked.max():.4g}" if np.isfinite(picked).all() else "n/a"
    speed = (f"{got.extracted} extracted ({got.extracted / got.seconds if got.seconds > 0 else 0:.1f} images/s on "
             f"{got.device})" if got.extracted else "none extracted")
    lines = [f"select {name} on {KINDS[pool.kind]} {readable(str(pool.root))}: {len(choice.picked)} of {usable} usable "
             f"images picked by {args.strategy} ({choice.column} {span}); {len(errors)} failed"
             f"{' (reasons in the error column)' if errors else ''}, {ignored} ignored"
             f"{f' ({details})' if details else ''}",
             f"  features: {got.cached} from the cache, {speed}; cache {readable(str(cache.folder))}"]
    if args.strategy == "kcenter":
        none = " (none: k-center starts from the image nearest the pool mean)" if labelled is None else ""
        lines.append(f"  labelled: {0 if labelled is None else len(labelled)} feature rows{none}")
    lines.append(f"  -> {readable(str(args.out))}/: predictions.csv (the whole pool; selected, selection_rank, "
                 f"{choice.column}), {upload.name} (the {len(choice.picked)} picks: import it into EcoTaxa), run.json")
    return lines


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
