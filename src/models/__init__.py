"""One file per model: models/<name lower-cased>.py holds class <Name>.

Some MMRec model files (SELFCFED_LGN, LayerGCN) import ``models.common.<x>`` instead of
``common.<x>``; those names are aliases of the harness's own ``common`` modules, so both spellings
give the same classes."""
import importlib
import sys

for _name in ("abstract_recommender", "encoders", "init", "loss"):
    sys.modules.setdefault(f"models.common.{_name}", importlib.import_module(f"common.{_name}"))
sys.modules.setdefault("models.common", importlib.import_module("common"))
