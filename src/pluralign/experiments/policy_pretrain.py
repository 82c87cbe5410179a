"""Stage 00_policy_pretrain: the small causal LM every PPO notebook starts from.

The cpu profile trains a GPT-2-architecture model from scratch on IMDB reviews; the paper
profile fine-tunes ``gpt2`` on the same text. The recipe is a library function
(:func:`pluralign.training.pretrain.train_and_evaluate`) because notebook 05 pretrains its
Llama proxy with it too; this module is the stage: its config and its metrics.
"""

from __future__ import annotations

from typing import Any

from pluralign.training.pretrain import PretrainConfig, PretrainResult

Config = PretrainConfig
"""``policy_pretrain``'s params (the recipe notebook 05 reuses)."""


#: The stage's DVC metrics: what the README quotes: held-out quality, whether the policy can stop,
#: size. Its other numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "heldout_perplexity",
    "stop_rate",
    "mean_new_tokens",
    "n_params",
)


def metrics_of(result: PretrainResult) -> dict[str, Any]:
    """What the stage reports: held-out quality, whether the policy can stop, size."""
    return {
        "heldout_loss": result.eval_loss,
        "heldout_perplexity": result.perplexity,
        "bits_per_char": result.bits_per_char,
        "stop_rate": result.stop_rate,
        "mean_new_tokens": float(
            sum(s["new_tokens"] for s in result.samples) / len(result.samples)
        ),
        "train_tokens": result.train_tokens,
        "n_params": result.n_params,
    }
