"""Ban one token from a causal LM's output: notebook 05's "EOS disabled".

The authors generate PPO responses with ``eos_token_id = 100_000`` (a token that never
occurs) and a length drawn outside the policy's control, so a reading-level preference must
show in words and sentences, not in when the answer stops. TRL 1.12's PPO trainer builds its
own generation config, so the ban lives in the model: a forward hook on the output layer
sets the token's logit to a large negative number. Sampling, PPO's log-probabilities, the
reference pass (the same network with its LoRA adapter off) and KL estimates then all see
one distribution, renormalised over the other tokens, and every answer runs to the length
it was given.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle

#: The banned token's logit: exp() of it is 0 in fp32/bf16, and 0 * it stays finite (an
#: infinite logit would make the entropy term 0 * inf = NaN).
BANNED_LOGIT = -1.0e4


def ban_token(model: torch.nn.Module, token_id: int) -> RemovableHandle:
    """Give ``token_id`` probability 0 in every forward pass of ``model`` (a causal LM or a
    peft wrapper of one); returns the hook's handle (``.remove()`` lifts the ban)."""
    head = model.get_output_embeddings()
    if head is None or token_id >= head.out_features:
        raise ValueError(f"token {token_id} is not an output row of {type(model).__name__}")
    index = torch.tensor([token_id])

    def hook(module: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, index.to(logits.device), BANNED_LOGIT)

    return head.register_forward_hook(hook)
