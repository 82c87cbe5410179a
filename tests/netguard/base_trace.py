"""Counts the model bases a process holds, for the memory-accounting test of notebook 05.

Imported by this folder's ``sitecustomize`` when ``$PLURALIGN_BASE_TRACE`` names a file:
every ``from_pretrained`` (the way every base enters a stage) is followed by a count of the
live transformer trunks (a ``PreTrainedModel`` that is its own ``base_model``: one per
frozen or trained copy of the backbone, deep copies included). Garbage not yet collected
still holds its memory, so it is counted too: a stage must free a base before the next one
loads. The record (each load's label and count, and the peak) is rewritten after each load.
"""

from __future__ import annotations

import gc
import json
import os


def _live_bases() -> int:
    from transformers import PreTrainedModel

    count = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, PreTrainedModel) and obj.base_model is obj:
                count += 1
        except Exception:
            continue
    return count


def install(path: str) -> None:
    from transformers import modeling_utils

    original = modeling_utils.PreTrainedModel.from_pretrained.__func__
    trace: list[list] = []

    def from_pretrained(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        trace.append([cls.__name__, _live_bases()])
        record = {"peak": max(n for _, n in trace), "loads": trace}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        return model

    modeling_utils.PreTrainedModel.from_pretrained = classmethod(from_pretrained)


if os.environ.get("PLURALIGN_BASE_TRACE"):
    install(os.environ["PLURALIGN_BASE_TRACE"])
