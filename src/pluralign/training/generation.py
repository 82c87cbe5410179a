"""Sampling from a causal LM, and the log-probabilities and KL of what was sampled.

One ``generate`` loop (:func:`sample_continuations`) serves every notebook: pretraining's
sample table, preference data, PPO evaluation. :func:`sample_rollouts` wraps it for prompts
that may be left-padded to one length (notebook 05's chat prompts): the padding is stripped
before generation, so it is masked rather than attended, and restored in
``Rollouts.prompt_ids``, so every rollout keeps the one prompt length that
:func:`kl_to_reference` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationSettings:
    """How a policy samples: in preference data, PPO rollouts and evaluation alike (maps
    onto TRL's ``PPOConfig.response_length`` and ``temperature``)."""

    max_new_tokens: int
    temperature: float

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@torch.no_grad()
def sample_continuations(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 32,
) -> list[dict]:
    """Sample one continuation per prompt; ``stopped`` marks an EOS within the budget."""
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", mininterval=5):
        batch = [list(p) for p in prompts[start : start + batch_size]]
        padded = tokenizer.pad({"input_ids": batch}, return_tensors="pt")  # left padding
        width = padded["input_ids"].shape[1]
        out = model.generate(
            input_ids=padded["input_ids"].to(model.device),
            attention_mask=padded["attention_mask"].to(model.device),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            suppress_tokens=[tokenizer.pad_token_id],  # PAD in a sample would read as padding
        )
        for prompt, row in zip(batch, out[:, width:].tolist(), strict=True):
            stopped = tokenizer.eos_token_id in row
            new = row[: row.index(tokenizer.eos_token_id)] if stopped else row
            rows.append(
                {
                    "prompt": tokenizer.decode(prompt[1:]),
                    "continuation": tokenizer.decode(new),
                    "new_tokens": len(new) + int(stopped),
                    "stopped": stopped,
                    "continuation_ids": new + [tokenizer.eos_token_id] * int(stopped),
                }
            )
    torch.random.set_rng_state(generator_state)
    return rows


@dataclass
class Rollouts:
    """One sampled continuation per prompt; ``texts`` = prompt + continuation (no EOS)."""

    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]  # as sampled, EOS included when it stopped
    texts: list[str]
    continuations: list[str]
    n_tokens: NDArray[np.int64]  # generated tokens, EOS included
    stopped: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.texts)


def strip_left_padding(ids: Sequence[int], pad_token_id: int) -> list[int]:
    """``ids`` without its leading PADs (a PAD inside a prompt, e.g. an UNK that pads, stays)."""
    ids = list(ids)
    start = next((i for i, t in enumerate(ids) if t != pad_token_id), len(ids))
    return ids[start:]


def sample_rollouts(
    policy,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 64,
) -> Rollouts:
    """One sample per prompt with the PPO generation settings (pure sampling, no top-k).

    Leading PADs of a prompt are stripped before generation and kept in
    ``Rollouts.prompt_ids``. Only leading ones: where UNK pads (Llama-2,
    :func:`pluralign.training.models.load_chat_tokenizer`), an UNK inside a prompt stays."""
    rows = sample_continuations(
        policy,
        tokenizer,
        [strip_left_padding(p, tokenizer.pad_token_id) for p in prompt_ids],
        max_new_tokens,
        temperature,
        seed,
        batch_size,
    )
    return Rollouts(
        prompt_ids=[list(p) for p in prompt_ids],
        continuation_ids=[r["continuation_ids"] for r in rows],
        texts=[r["prompt"] + r["continuation"] for r in rows],
        continuations=[r["continuation"] for r in rows],
        n_tokens=np.array([r["new_tokens"] for r in rows], dtype=np.int64),
        stopped=np.array([r["stopped"] for r in rows], dtype=bool),
    )


@torch.no_grad()
def response_logprobs(
    model, ids: torch.Tensor, prompt_len: int, pad_id: int, temperature: float = 1.0
) -> torch.Tensor:
    """(B,) summed log pi(response | prompt) of right-padded [prompt | response] rows, with
    the logits divided by ``temperature`` (the sampling distribution)."""
    mask = ids != pad_id
    logits = model(input_ids=ids.masked_fill(~mask, 0), attention_mask=mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    keep = mask[:, 1:].clone()
    keep[:, : prompt_len - 1] = False
    return (logp * keep).sum(dim=1)


def kl_to_reference(
    policy, ref, tokenizer, rollouts: Rollouts, temperature: float, batch_size: int = 64
) -> float:
    """Monte Carlo ``KL(pi || pi_ref)`` in nats per sequence over the rollouts (sampled from
    pi): mean of ``log pi(y|x) - log pi_ref(y|x)``, both at the sampling temperature."""
    plen = {len(p) for p in rollouts.prompt_ids}
    if len(plen) != 1:
        raise ValueError("kl_to_reference needs prompts of one length")
    plen_ = plen.pop()
    pad = tokenizer.pad_token_id
    total = []
    for s in range(0, len(rollouts), batch_size):
        rows = [
            p + c
            for p, c in zip(
                rollouts.prompt_ids[s : s + batch_size],
                rollouts.continuation_ids[s : s + batch_size],
                strict=True,
            )
        ]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        lp = _logprobs_on_cpu(policy, ids, plen_, pad, temperature)
        lr = _logprobs_on_cpu(ref, ids, plen_, pad, temperature)
        total.append((lp - lr).numpy())
    return float(np.concatenate(total).mean())


def _logprobs_on_cpu(model, ids: torch.Tensor, prompt_len: int, pad: int, temperature: float):
    """:func:`response_logprobs` on ``model``'s own device, returned as CPU float64: after
    PPO the policy sits on the GPU while a reference may not, so each model gets the ids
    where it is and the difference is taken on the CPU."""
    lp = response_logprobs(model.eval(), ids.to(model.device), prompt_len, pad, temperature)
    return lp.to(device="cpu", dtype=torch.float64)
