"""Loading and validating an MMRec-format dataset: ``<name>.inter`` plus optional feature files,
and the fingerprint of their content that results are keyed by."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from utils.errors import DataError
from utils.results import atomic_write

OBTAIN_HINT = ("put MMRec's preprocessed files there (see README, 'Data'), "
               "or build them with `python src/prepare.py`")
DATA_PATH_HINT = "or point --data_path to the folder that holds <dataset>/"
NPY_MAGIC = b"\x93NUMPY"
SPLIT_NAMES = ("train", "valid", "test")


def _read_columns(path: Path, sep: str, names: list[str]) -> dict[str, np.ndarray]:
    """Read the named columns of a header-first delimited file as float64 arrays."""
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split(sep)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    header = [h.strip() for h in header]
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(f"{path} lacks required column(s) {', '.join(missing)} "
                        f"(header has: {', '.join(header)}); columns are tab-separated with a header line")
    cols = [header.index(n) for n in names]
    try:
        data = np.loadtxt(path, delimiter=sep, skiprows=1, usecols=cols, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path} has a non-numeric or missing value ({str(exc).splitlines()[0]}); "
                        f"IDs and {names[-1]} must be integers") from None
    return {n: data[:, j] for j, n in enumerate(names)}


def _as_ids(values: np.ndarray, column: str, path: Path) -> np.ndarray:
    bad = np.flatnonzero((values != np.floor(values)) | ~np.isfinite(values))
    if bad.size:
        raise DataError(f"{path}: column {column} must hold integers, but data row {bad[0] + 1} "
                        f"has {values[bad[0]]}")
    neg = np.flatnonzero(values < 0)
    if neg.size:
        raise DataError(f"{path}: column {column} must be non-negative (0-based IDs), but data row "
                        f"{neg[0] + 1} has {int(values[neg[0]])}")
    return values.astype(np.int64)


def load_feature(path: Path, n_items: int) -> np.ndarray | None:
    """Load one feature file as float32 [n_items, dim]; None when the file does not exist."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"cannot read feature file {path}: {exc.strerror}") from None
    if magic != NPY_MAGIC:  # numpy would blame pickling (allow_pickle), which is not the problem
        raise DataError(f"feature file {path} is not a .npy file (no NumPy header); it must be a float "
                        f"array [n_items, dim] written with numpy.save")
    try:
        feat = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read feature file {path} ({str(exc).splitlines()[0]}); "
                        f"it must be a .npy float array") from None
    if feat.ndim != 2 or not np.issubdtype(feat.dtype, np.number):
        raise DataError(f"feature file {path} must be a 2-D numeric array [n_items, dim], "
                        f"got shape {feat.shape} of {feat.dtype}")
    if feat.shape[0] != n_items:
        raise DataError(f"feature file {path} has {feat.shape[0]} rows but the dataset has {n_items} "
                        f"items (max itemID + 1); row i must be item i")
    feat = feat.astype(np.float32, copy=False)
    bad = ~np.isfinite(feat).all(axis=1)
    if bad.any():
        raise DataError(f"feature file {path} has NaN or inf in {int(bad.sum())} row(s), first at item "
                        f"{int(np.flatnonzero(bad)[0])}; fill them (e.g. with the mean feature)")
    return feat


FEATURE_KEYS = ("vision_feature_file", "text_feature_file")


def data_files(config: Any) -> dict[str, Path]:
    """The files a dataset is read from: ``inter``, and for a multimodal model each configured
    feature file (a missing one is still listed: it leaves its modality out)."""
    folder = Path(config["data_path"]) / config["dataset"]
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist: {OBTAIN_HINT}, {DATA_PATH_HINT}")
    inter_file = folder / (config["inter_file_name"] or f"{config['dataset']}.inter")
    if not inter_file.exists():
        raise DataError(f"interaction file {inter_file} is missing: {OBTAIN_HINT}, {DATA_PATH_HINT}")
    files = {"inter": inter_file}
    if config["is_multimodal_model"]:
        files.update({key: folder / config[key] for key in FEATURE_KEYS if config[key]})
    return files


# --- content fingerprint --------------------------------------------------------------------
# sha256 of each file, cached by its resolved path with (size, mtime_ns, ctime_ns): in memory for
# this process and, given a cache folder (the output folder, never the data folder), in a JSON
# file there that other workers and later runs read. Any write to a file changes its ctime.
FINGERPRINT_CACHE = "data_fingerprints.json"
_DIGESTS: dict[str, dict] = {}


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


def _read_cache(path: Path | None) -> dict[str, dict]:
    if path is None or not path.exists():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))["files"]
        return {k: v for k, v in found.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # a damaged cache is only a cache: hash again


def _write_cache(path: Path, entries: dict[str, dict]) -> None:
    """Merge ``entries`` into the cache file (re-read first: other workers may have added some)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_cache(path), **entries}
        with atomic_write(path) as fh:
            fh.write(json.dumps({"files": merged}, indent=1, sort_keys=True).encode())
    except OSError as exc:
        logging.getLogger().warning(f"cannot write the data fingerprint cache {path}: {exc}")


def fingerprint(config: Any, cache_dir: Path | None = None) -> str:
    """A short hash of the content of the files this config reads (``data_files``), so that two
    different copies of a dataset under one name never share results (and equal copies do)."""
    cache_path = Path(cache_dir) / FINGERPRINT_CACHE if cache_dir is not None else None
    on_disk: dict[str, dict] | None = None
    fresh: dict[str, dict] = {}
    parts: dict[str, str | None] = {}
    for role, path in data_files(config).items():
        if not path.exists():
            parts[role] = None  # a missing feature file: that modality is left out
            continue
        name, stamp = str(path.resolve()), _stamp(path)
        entry = _DIGESTS.get(name)
        if entry is None or {k: entry.get(k) for k in stamp} != stamp:
            on_disk = _read_cache(cache_path) if on_disk is None else on_disk
            entry = on_disk.get(name)
            if entry is None or {k: entry.get(k) for k in stamp} != stamp:
                entry = fresh[name] = {**stamp, "sha256": _sha256(path)}
            _DIGESTS[name] = entry
        parts[role] = entry["sha256"]
    if fresh and cache_path is not None:
        _write_cache(cache_path, fresh)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class RecDataset:
    """All interactions of a dataset, with its split labels and item features.

    ``n_users``/``n_items`` are max ID + 1 over the whole file, as in MMRec. ``split()`` gives
    the train, valid and test parts as ``RecDataset`` views that share the counts and features.
    """

    def __init__(self, config: Any, users: np.ndarray | None = None, items: np.ndarray | None = None,
                 labels: np.ndarray | None = None, parent: "RecDataset | None" = None) -> None:
        self.config = config
        self.logger = logging.getLogger("mmrec")
        if parent is not None:
            self.dataset_name, self.n_users, self.n_items = parent.dataset_name, parent.n_users, parent.n_items
            self.v_feat, self.t_feat = parent.v_feat, parent.t_feat
            self.users, self.items, self.labels = users, items, labels
            return
        self.dataset_name = config["dataset"]
        files = data_files(config)
        inter_file = files["inter"]
        uid, iid = config["USER_ID_FIELD"] or "userID", config["ITEM_ID_FIELD"] or "itemID"
        lab = config["inter_splitting_label"] or "x_label"
        sep = config["field_separator"] or "\t"
        cols = _read_columns(inter_file, sep, [uid, iid, lab])
        self.users = _as_ids(cols[uid], uid, inter_file)
        self.items = _as_ids(cols[iid], iid, inter_file)
        self.labels = _as_ids(cols[lab], lab, inter_file)
        bad = np.flatnonzero(self.labels > 2)
        if bad.size:
            raise DataError(f"{inter_file}: {lab} must be 0 (train), 1 (valid) or 2 (test), but data row "
                            f"{bad[0] + 1} has {int(self.labels[bad[0]])}")
        if not (self.labels == 0).any():
            raise DataError(f"{inter_file} has no training rows ({lab} = 0); nothing to train on")
        self.n_users = int(self.users.max()) + 1
        self.n_items = int(self.items.max()) + 1
        self._report_duplicates(inter_file)
        self._report_unseen_items(inter_file)
        self._cold_start_users(inter_file, bool(config["filter_out_cod_start_users"]))
        self.v_feat = self.t_feat = None
        for attr, key in (("v_feat", "vision_feature_file"), ("t_feat", "text_feature_file")):
            if files.get(key) is not None:
                setattr(self, attr, load_feature(files[key], self.n_items))
                if getattr(self, attr) is None:
                    modality = "image" if attr == "v_feat" else "text"
                    self.logger.warning(f"{key} {files[key]} does not exist: the {modality} modality is left out")

    # --- data problems are reported, never silent ----------------------------------------
    def _report_duplicates(self, path: Path) -> None:
        """Repeated (user, item) rows are kept, as MMRec keeps them: training draws each row (a
        repeated pair twice per epoch); the interaction matrices, the masks and the metrics count
        a pair once. ``src/prepare.py`` drops them when it builds a dataset."""
        codes = self.users * self.n_items + self.items
        unique, counts = np.unique(codes, return_counts=True)
        extra = int(codes.size - unique.size)
        if not extra:
            return
        _, splits = np.unique(np.unique(codes * 3 + self.labels) // 3, return_counts=True)
        across = int((splits > 1).sum())  # pairs with rows in two or three splits
        self.logger.warning(f"{path}: {extra} duplicate user-item rows ({int((counts > 1).sum())} pairs), kept as "
                            f"MMRec keeps them (training samples every row; matrices and metrics count a pair once)"
                            + (f"; {across} pairs are in more than one split, so their valid/test rows are also "
                               f"training items and can never be hit" if across else ""))

    def _report_unseen_items(self, path: Path) -> None:
        """Item IDs without a training row: gaps in the ID range, or items only in valid/test.
        They stay in the ranking (n_items = max ID + 1, as in MMRec) with untrained embeddings."""
        in_train = np.zeros(self.n_items, dtype=bool)
        in_train[self.items[self.labels == 0]] = True
        anywhere = np.zeros(self.n_items, dtype=bool)
        anywhere[self.items] = True
        gaps, eval_only = int((~anywhere).sum()), int((anywhere & ~in_train).sum())
        if gaps or eval_only:
            self.logger.warning(f"{path}: {gaps + eval_only} of {self.n_items} item IDs never occur in training "
                                f"({gaps} nowhere in the file: gaps in the ID range; {eval_only} only in valid/test); "
                                f"they are still ranked, with untrained embeddings")
        user_gaps = self.n_users - int(np.unique(self.users).size)
        if user_gaps:
            self.logger.warning(f"{path}: {user_gaps} of {self.n_users} user IDs have no row at all "
                                f"(gaps in the ID range); they are never evaluated")

    def _cold_start_users(self, path: Path, drop: bool) -> None:
        """Users with valid/test rows but no training row: dropped (``filter_out_cod_start_users``,
        as in MMRec) or kept, with a warning either way."""
        warm = np.zeros(self.n_users, dtype=bool)
        warm[self.users[self.labels == 0]] = True
        keep = warm[self.users]
        rows = int((~keep).sum())
        if not rows:
            return
        users = int(np.unique(self.users[~keep]).size)
        if drop:
            self.logger.warning(f"{path}: {users} users appear only in valid/test; their {rows} rows are "
                                f"dropped (filter_out_cod_start_users)")
            self.users, self.items, self.labels = self.users[keep], self.items[keep], self.labels[keep]
        else:
            self.logger.warning(f"{path}: {users} users appear only in valid/test ({rows} rows), kept "
                                f"(filter_out_cod_start_users False): they are scored with untrained embeddings")

    # --- MMRec-compatible accessors -------------------------------------------------------
    @property
    def inter_num(self) -> int:
        return int(self.users.size)

    def get_user_num(self) -> int:
        return self.n_users

    def get_item_num(self) -> int:
        return self.n_items

    def __len__(self) -> int:
        return self.inter_num

    def split(self) -> list["RecDataset"]:
        """The train, valid and test parts (x_label 0, 1, 2)."""
        return [RecDataset(self.config, self.users[m], self.items[m], self.labels[m], parent=self)
                for m in (self.labels == k for k in range(3))]

    def inter_matrix(self, form: str = "coo", value_field: Any = None) -> sp.spmatrix:
        """The binary n_users x n_items matrix of these interactions (duplicates count once)."""
        mat = sp.csr_matrix((np.ones(self.inter_num, dtype=np.float32), (self.users, self.items)),
                            shape=(self.n_users, self.n_items))
        mat.sum_duplicates()
        mat.data[:] = 1.0
        if form == "csr":
            return mat
        if form == "coo":
            return mat.tocoo()
        raise ValueError(f"inter_matrix form must be 'coo' or 'csr', not {form!r}")

    def statistics(self) -> str:
        """Users, items, interactions, sparsity, and the same per split."""
        lines = [f"{self.dataset_name}: {self.n_users} users, {self.n_items} items, "
                 f"{self.inter_num} interactions, sparsity {1 - self.inter_num / (self.n_users * self.n_items):.5f}"]
        for k, name in enumerate(SPLIT_NAMES):
            m = self.labels == k
            lines.append(f"  {name}: {int(m.sum())} interactions, {np.unique(self.users[m]).size} users, "
                         f"{np.unique(self.items[m]).size} items")
        feats = [f"{n} {f.shape[1]}-d" for n, f in (("image", self.v_feat), ("text", self.t_feat)) if f is not None]
        lines.append(f"  features: {', '.join(feats) if feats else 'none'}")
        return "\n".join(lines)
