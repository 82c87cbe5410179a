"""Loading hub models: a revision without safetensors weights stops with the way out."""

from __future__ import annotations

import pytest
import transformers

from pluralign.pipeline.assets import AssetError
from pluralign.training.models import load_causal_lm, load_sequence_classifier

PINNED = "someone/model@" + "a" * 40


@pytest.mark.parametrize("loader", [load_causal_lm, load_sequence_classifier])
def test_a_revision_without_safetensors_says_how_to_fix_it(monkeypatch, loader) -> None:
    """``use_safetensors=True`` rejects a ``.bin``-only commit with transformers' own error;
    the loader says why pickled weights are not read and what to pin instead."""

    def bin_only(name, **kwargs):
        assert kwargs["use_safetensors"] is True and kwargs["revision"] == "a" * 40
        raise OSError(f"{name} does not appear to have a file named model.safetensors")

    for auto in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", bin_only)
    with pytest.raises(AssetError, match=r"no \*\.safetensors weights.*refs/pr/<n>"):
        loader(PINNED)


def test_other_load_errors_keep_their_message(monkeypatch) -> None:
    def broken(name, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(AssetError, match="cannot load causal LM: connection reset"):
        load_causal_lm(PINNED)
