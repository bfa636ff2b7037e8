"""Offline teacher-logits store: truncated teacher distributions keyed by (document id, token
offset) of an indexed dataset, compressed to ~1.5 bytes per kept entry. Written by
tools/dump_teacher_logits.py (`megakd.teacher.dump`, or `write_store`), read by
`open_store(dir, data_prefix).lookup(...)`.
Format and error bound: docs/LOGITS_STORE.md."""

from megakd.data.logits_store.store import LogitsStore, StoreMeta, open_store, write_store
from megakd.errors import StoreError

__all__ = ["LogitsStore", "StoreError", "StoreMeta", "open_store", "write_store"]
