"""The two preparation pipelines (Amazon raw files, generic CSVs) and the shared writing steps."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from utils.errors import DataError, HarnessError
from utils.preparation import features as feat
from utils.preparation.card import render_card
from utils.preparation.filtering import IdMaps, build_id_maps, drop_duplicates, k_core, remap, write_id_maps
from utils.preparation.readers import (
    IMAGE_FEATURE_DIM,
    InteractionTable,
    check_readable,
    read_image_features,
    read_interactions_csv,
    read_item_text_csv,
    read_meta,
    read_ratings_csv,
    read_reviews,
)
from utils.preparation.split import TEST, TRAIN, VALID, split_interactions, write_inter

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TEXT_FILE, IMAGE_FILE = "text_feat.npy", "image_feat.npy"


@dataclass
class PrepareOptions:
    """What to build and where; shared by both pipelines."""

    name: str
    out_root: Path
    config_dir: Path
    k: int = 5
    seed: int = 2023
    split: str = "random"
    force: bool = False
    skip_bad_lines: bool = False
    min_interactions: int = 10
    command: str = "(called from Python)"
    log: Callable[[str], None] = print


@dataclass
class PrepareResult:
    """Where the dataset went and its statistics (the same ones the card shows)."""

    folder: Path
    yaml_path: Path
    stats: dict[str, object] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _check_targets(opts: PrepareOptions) -> Path:
    """Validate the name and refuse to overwrite an existing dataset yaml without --force."""
    if not _NAME_RE.match(opts.name):
        raise DataError(f"dataset name {opts.name!r} must start with a letter or digit and hold only "
                        f"letters, digits, '_', '-' or '.'")
    if opts.k < 1:
        raise DataError(f"--k must be at least 1, got {opts.k}")
    yaml_path = opts.config_dir / f"{opts.name}.yaml"
    if yaml_path.exists() and not opts.force:
        raise DataError(f"{yaml_path} already exists; use --force to overwrite it")
    return yaml_path


def _filter(table: InteractionTable, opts: PrepareOptions, stats: dict[str, object]) -> list:
    """Drop duplicate pairs, run the k-core filter and check enough is left."""
    stats["raw interactions read"] = len(table.rows) + table.missing_rows
    rows, dups = drop_duplicates(table.rows)
    rows, rounds = k_core(rows, opts.k)
    n_users, n_items = len({r.user for r in rows}), len({r.item for r in rows})
    if len(rows) < opts.min_interactions or n_users < 2 or n_items < 2:
        raise DataError(
            f"only {len(rows)} interactions ({n_users} users, {n_items} items) remain after "
            f"{opts.k}-core filtering (need at least {opts.min_interactions}); try a lower --k"
        )
    stats["rows with a missing field (dropped)"] = table.missing_rows
    stats["duplicate user-item rows (dropped)"] = dups
    stats["malformed lines skipped"] = table.bad_lines
    stats["k-core"] = f"k={opts.k}, stable after {rounds} rounds"
    opts.log(f"{len(rows)} interactions left after {opts.k}-core filtering ({rounds} rounds)")
    return rows


def _split_and_count(rows: list, maps: IdMaps, opts: PrepareOptions, stats: dict) -> list:
    """The labelled interactions (in memory); fills the count statistics, first in the card."""
    labelled = split_interactions(remap(rows, maps), opts.split, opts.seed)
    labels = [label for _, label in labelled]
    n_users, n_items, n = len(maps.users), len(maps.items), len(labelled)
    counts = {
        "users": n_users,
        "items": n_items,
        "interactions": n,
        "train": labels.count(TRAIN),
        "valid": labels.count(VALID),
        "test": labels.count(TEST),
        "sparsity": f"{100.0 * (1.0 - n / (n_users * n_items)):.4f}%",
        "split": f"{opts.split}, seed {opts.seed}" if opts.split == "random" else "temporal",
    }
    # Put the headline numbers first in the card.
    rest = dict(stats)
    stats.clear()
    stats.update(counts)
    stats.update(rest)
    return labelled


def _write_interactions(labelled: list, maps: IdMaps, opts: PrepareOptions, folder: Path) -> list[Path]:
    """Write the labelled .inter file and the id maps."""
    inter_path = folder / f"{opts.name}.inter"
    write_inter(labelled, inter_path)
    return [inter_path, *write_id_maps(maps, folder)]


def _load_encoders(text: feat.TextEncoder | None, image: feat.ImageEncoder | None, need_image: bool,
                   opts: PrepareOptions) -> tuple[feat.TextEncoder, feat.ImageEncoder | None]:
    """Load the feature encoders first: a missing extra (sentence-transformers, the CNN) stops
    the tool before it reads the big files or writes anything."""
    if text is None:
        opts.log("loading the text encoder (all-MiniLM-L6-v2)")
        text = feat.load_text_encoder()
    if need_image and image is None:
        opts.log("loading the image encoder (EfficientNet-Lite0)")
        image = feat.load_image_encoder()
    return text, image


def _count_missing(items: list, found: dict, bad_lines: int, what: str, line_kind: str, stats: dict,
                   opts: PrepareOptions) -> None:
    """Count the items without a ``what`` record (they get an empty sentence) and skipped lines."""
    missing = sum(1 for i in items if i not in found)
    stats[f"items without {what}"] = missing
    if bad_lines:
        stats[f"malformed {line_kind} lines skipped"] = bad_lines
    if missing:
        opts.log(f"warning: {missing} of {len(items)} items have no {what} (empty text)")


def _encode_text(sentences: list[str], encoder: feat.TextEncoder, opts: PrepareOptions) -> tuple[np.ndarray, str]:
    opts.log(f"encoding {len(sentences)} item texts with {encoder.name}")
    out = np.asarray(encoder.encode(sentences), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(sentences):
        raise HarnessError(f"text encoder {encoder.name} returned shape {out.shape} for {len(sentences)} sentences")
    return out, f"{encoder.name}, {out.shape[1]}-d"


def _save_npy(array: np.ndarray, path: Path) -> Path:
    np.save(path, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return path


def _finish(opts: PrepareOptions, folder: Path, yaml_path: Path, files: list[Path], stats: dict, has_image: bool) -> PrepareResult:
    """Drop a stale image file, write the yaml and the card."""
    stale = folder / IMAGE_FILE
    if not has_image and stale.exists():
        stale.unlink()
        opts.log(f"removed stale {stale} (no image input this time)")
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(
        "# Written by src/prepare.py\n"
        "USER_ID_FIELD: userID\n"
        "ITEM_ID_FIELD: itemID\n"
        f"inter_file_name: '{opts.name}.inter'\n"
        f"vision_feature_file: {IMAGE_FILE}\n"
        f"text_feature_file: {TEXT_FILE}\n"
        'field_separator: "\\t"\n',
        encoding="utf-8",
        newline="\n",
    )
    card = render_card(opts.name, stats, opts.command, opts.seed, [*files, yaml_path])
    (folder / "README.md").write_text(card, encoding="utf-8", newline="\n")
    for label, value in stats.items():
        opts.log(f"  {label}: {value}")
    opts.log(f"wrote {folder} and {yaml_path}")
    return PrepareResult(folder, yaml_path, stats, [*files, folder / "README.md"])


def prepare_amazon(
    opts: PrepareOptions,
    meta: Path,
    reviews: Path | None = None,
    ratings: Path | None = None,
    images: Path | None = None,
    text_encoder: feat.TextEncoder | None = None,
) -> PrepareResult:
    """Amazon 2014 raw files -> data/<name>/ + configs/dataset/<name>.yaml. Everything is read,
    checked and encoded in memory first: an error leaves no file behind."""
    yaml_path = _check_targets(opts)
    if (reviews is None) == (ratings is None):
        raise DataError("give exactly one of --reviews or --ratings")
    for path in (p for p in (reviews, ratings, meta, images) if p is not None):
        check_readable(path)
    text_encoder, _ = _load_encoders(text_encoder, None, False, opts)
    stats: dict[str, object] = {}
    if reviews is not None:
        opts.log(f"reading reviews {reviews}")
        table = read_reviews(reviews, opts.skip_bad_lines)
    else:
        opts.log(f"reading ratings {ratings}")
        table = read_ratings_csv(ratings, opts.skip_bad_lines)
    rows = _filter(table, opts, stats)
    maps = build_id_maps(rows)
    labelled = _split_and_count(rows, maps, opts, stats)

    opts.log(f"reading meta {meta}")
    meta_map, bad_meta = read_meta(meta, set(maps.items), opts.skip_bad_lines)
    asins = list(maps.items)  # sorted ASIN order = itemID order
    _count_missing(asins, meta_map, bad_meta, "metadata", "meta", stats, opts)
    text, text_desc = _encode_text([feat.build_sentence(meta_map.get(a)) for a in asins], text_encoder, opts)
    stats["text features"] = text_desc

    vis = None
    if images is not None:
        opts.log(f"streaming image features {images}")
        vis, found, n_records = read_image_features(images, maps.items, IMAGE_FEATURE_DIM)
        vis = feat.fill_missing_with_mean(vis, found, f"a record in {images}")
        missing = int((~found).sum())
        stats["items without image (mean-filled)"] = missing
        stats["image features"] = f"McAuley CNN, {IMAGE_FEATURE_DIM}-d ({n_records} records in file)"
        opts.log(f"{missing} of {len(asins)} items have no image record; they get the mean vector")
    else:
        stats["image features"] = "none (no --images given)"
    return _write_all(opts, yaml_path, labelled, maps, text, vis, stats)


def _write_all(opts: PrepareOptions, yaml_path: Path, labelled: list, maps: IdMaps, text: np.ndarray,
               vis: np.ndarray | None, stats: dict) -> PrepareResult:
    """Write the dataset folder, the yaml and the card, once everything is computed."""
    folder = opts.out_root / opts.name
    folder.mkdir(parents=True, exist_ok=True)
    files = _write_interactions(labelled, maps, opts, folder)
    files.append(_save_npy(text, folder / TEXT_FILE))
    if vis is not None:
        files.append(_save_npy(vis, folder / IMAGE_FILE))
    return _finish(opts, folder, yaml_path, files, stats, vis is not None)


def prepare_generic(
    opts: PrepareOptions,
    interactions: Path,
    item_text: Path,
    images_dir: Path | None = None,
    text_encoder: feat.TextEncoder | None = None,
    image_encoder: feat.ImageEncoder | None = None,
) -> PrepareResult:
    """Generic CSVs (+ optional image folder) -> data/<name>/ + configs/dataset/<name>.yaml.
    Everything is read, checked and encoded in memory first: an error leaves no file behind."""
    yaml_path = _check_targets(opts)
    check_readable(interactions)
    check_readable(item_text)
    if images_dir is not None and not images_dir.is_dir():
        raise DataError(f"image folder not found: {images_dir}")
    text_encoder, image_encoder = _load_encoders(text_encoder, image_encoder, images_dir is not None, opts)
    table = read_interactions_csv(interactions, opts.skip_bad_lines)
    if opts.split == "temporal" and not table.has_timestamp:
        raise DataError(f"--split temporal needs a timestamp column in {interactions}")
    stats: dict[str, object] = {}
    rows = _filter(table, opts, stats)
    maps = build_id_maps(rows)
    labelled = _split_and_count(rows, maps, opts, stats)
    if not table.has_rating:
        stats["rating"] = "no rating column: written as 1.0"
    if not table.has_timestamp:
        stats["timestamp"] = "no timestamp column: written as 0"

    texts, bad = read_item_text_csv(item_text, opts.skip_bad_lines)
    items = list(maps.items)
    _count_missing(items, texts, bad, "text", "item-text", stats, opts)
    text, text_desc = _encode_text([texts.get(i, "") for i in items], text_encoder, opts)
    stats["text features"] = text_desc

    vis = None
    if images_dir is not None:
        paths = feat.find_item_images(images_dir, items)
        if not paths:
            raise DataError(f"no image in {images_dir} is named after an item id (file stem = item id)")
        have = [i for i in items if i in paths]
        opts.log(f"encoding {len(have)} images with {image_encoder.name}")
        enc = np.asarray(image_encoder.encode([paths[i] for i in have]), dtype=np.float32)
        if enc.ndim != 2 or enc.shape[0] != len(have):
            raise HarnessError(f"image encoder {image_encoder.name} returned shape {enc.shape} for {len(have)} images")
        vis = np.zeros((len(items), enc.shape[1]), dtype=np.float32)
        found = np.zeros(len(items), dtype=bool)
        idx = np.array([maps.items[i] for i in have])
        vis[idx], found[idx] = enc, True
        vis = feat.fill_missing_with_mean(vis, found, "an image")
        stats["items without image (mean-filled)"] = len(items) - len(have)
        stats["image features"] = f"{image_encoder.name}, {enc.shape[1]}-d"
    else:
        stats["image features"] = "none (no --images-dir given)"
    return _write_all(opts, yaml_path, labelled, maps, text, vis, stats)
