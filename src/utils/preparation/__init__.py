"""Dataset preparation: raw Amazon 2014 files or generic CSVs -> MMRec-format dataset folders.

Heavy libraries (sentence-transformers, the CNN) are imported only inside the encoders that use
them, so importing this package needs nothing beyond numpy and pyyaml.
"""

from utils.preparation.card import render_card, sha256_of
from utils.preparation.features import (
    ImageEncoder,
    TextEncoder,
    build_sentence,
    load_image_encoder,
    load_text_encoder,
)
from utils.preparation.filtering import IdMaps, build_id_maps, k_core, remap
from utils.preparation.pipeline import PrepareOptions, PrepareResult, prepare_amazon, prepare_generic
from utils.preparation.readers import (
    IMAGE_FEATURE_DIM,
    Interaction,
    read_image_features,
    read_interactions_csv,
    read_item_text_csv,
    read_meta,
    read_ratings_csv,
    read_reviews,
)
from utils.preparation.split import TEST, TRAIN, VALID, split_counts, split_interactions

__all__ = [
    "IMAGE_FEATURE_DIM",
    "IdMaps",
    "ImageEncoder",
    "Interaction",
    "PrepareOptions",
    "PrepareResult",
    "TEST",
    "TRAIN",
    "TextEncoder",
    "VALID",
    "build_id_maps",
    "build_sentence",
    "k_core",
    "load_image_encoder",
    "load_text_encoder",
    "prepare_amazon",
    "prepare_generic",
    "read_image_features",
    "read_interactions_csv",
    "read_item_text_csv",
    "read_meta",
    "read_ratings_csv",
    "read_reviews",
    "remap",
    "render_card",
    "sha256_of",
    "split_counts",
    "split_interactions",
]
