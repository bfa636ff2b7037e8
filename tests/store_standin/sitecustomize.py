"""TEST-ONLY: install the store stand-in as megakd.data.logits_store when the real one is absent."""
import importlib.util
import sys

if importlib.util.find_spec("megakd.data.logits_store") is None:
    import store_standin

    sys.modules["megakd.data.logits_store"] = store_standin
