"""One frozen base model, many LoRA adapters: notebook 05's reward models on one 7B base.

Every reward model of MaxMin-RLHF at 7B (single, per-group, judges, the EM slots) is a LoRA
adapter and a ``score`` head on the *same* backbone. Loading a base per model held 12-14
bases at the peak (about 92 GiB in 8-bit, review of 2026-12, defect 3); here one base
carries them all, and peft switches between them: ``set_adapter`` routes the forward pass
through one adapter (and its own copy of the ``score`` head, peft's ``modules_to_save``) and
makes only that adapter trainable, so TRL's ``RewardTrainer`` trains one model at a time on
the shared base. A saved adapter is a folder :func:`peft.PeftModel.from_pretrained` reads.

:class:`WithoutAdapter` is the reference policy as the policy with its adapter switched
off (TRL's PPO does the same), so evaluation needs no second copy of the base either.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pluralign._typing import FloatArray
from pluralign.pipeline.io import save_dir_atomic
from pluralign.training.lora import fp32_trainables, lora_target_modules

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel


class AdapterBank:
    """A frozen ``base`` and the LoRA adapters added to or loaded onto it, by name.

    peft cannot hold a model with no adapter at all, so dropping the last adapter keeps
    its (small) weights until the next one arrives."""

    def __init__(self, base: PreTrainedModel) -> None:
        self.base = base
        self.model: PeftModel | None = None
        self._stale: set[str] = set()

    @property
    def names(self) -> list[str]:
        """The adapters held (dropped ones excluded)."""
        if self.model is None:
            return []
        return [n for n in self.model.peft_config if n not in self._stale]

    def add(self, name: str, config: LoraConfig) -> str:
        """A fresh trainable adapter ``name`` (LoRA B = 0; a new ``score`` head drawn from
        torch's global RNG, as a freshly loaded classifier's would be); returns ``name``."""
        from peft import get_peft_model

        self._check_new(name)
        config = copy.deepcopy(config)
        if config.target_modules is None:
            config.target_modules = set(lora_target_modules(self.base))
        config.fan_in_fan_out = getattr(self.base.config, "model_type", None) == "gpt2"
        if self.model is None:
            self.model = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)
        self._fresh_heads(name, config)
        self.use(name)
        fp32_trainables(self.model)
        self._forget_stale()
        return name

    def load(self, name: str, folder: str | Path) -> str:
        """The adapter saved in ``folder`` (by :meth:`save` or ``save_pretrained``), frozen."""
        from peft import PeftModel

        self._check_new(name)
        if self.model is None:
            self.model = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name)
        else:
            self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        self._forget_stale()
        return name

    def use(self, name: str) -> PeftModel:
        """The model with adapter ``name`` active (the only trainable one)."""
        if self.model is None or name not in self.names:
            raise KeyError(f"no adapter {name!r} in the bank (it holds {self.names})")
        self.model.set_adapter(name)
        return self.model

    def save(self, name: str, folder: str | Path) -> Path:
        """Write adapter ``name`` (and its head) to ``folder`` atomically, at its top level."""
        return save_dir_atomic(folder, lambda tmp: self.write(name, tmp))

    def write(self, name: str, folder: Path) -> None:
        """Write adapter ``name`` into the existing ``folder`` (not atomic: see :meth:`save`)."""
        self.use(name).save_pretrained(folder, selected_adapters=[name])
        nested = folder / name  # peft nests every adapter but "default" in a subfolder
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), folder / item.name)
            nested.rmdir()

    def drop(self, name: str) -> None:
        """Free adapter ``name`` (kept until the next add when it is the last one)."""
        if name not in self.names:
            raise KeyError(f"no adapter {name!r} in the bank (it holds {self.names})")
        assert self.model is not None
        if len(self.model.peft_config) > 1:
            others = [n for n in self.model.peft_config if n != name]
            self.model.set_adapter(others[0])
            self.model.delete_adapter(name)
        else:
            self._stale.add(name)

    def scorer(self, name: str, score: Callable[[Any], FloatArray]) -> Callable[..., FloatArray]:
        """``score(model)`` evaluated with adapter ``name`` active, as a ``texts -> rewards``
        callable: e.g. ``bank.scorer("single", lambda m: reward_fn(m, tok, 512))``."""

        def scored(texts: list[str]) -> FloatArray:
            return score(self.use(name))(texts)

        return scored

    def _check_new(self, name: str) -> None:
        if name in self.names:
            raise ValueError(f"the bank already holds an adapter {name!r}")
        if self.model is not None and name in self.model.peft_config:  # a stale one
            if len(self.model.peft_config) == 1:
                raise ValueError(
                    f"adapter {name!r} was dropped but is still the bank's only adapter "
                    "(peft cannot hold none): use a new name"
                )
            self._stale.discard(name)
            self._delete(name)

    def _forget_stale(self) -> None:
        for name in list(self._stale):
            self._stale.discard(name)
            self._delete(name)

    def _delete(self, name: str) -> None:
        assert self.model is not None
        if len(self.model.peft_config) > 1:
            if self.model.active_adapter == name:
                self.model.set_adapter(next(n for n in self.model.peft_config if n != name))
            self.model.delete_adapter(name)

    def _fresh_heads(self, name: str, config: LoraConfig) -> None:
        """peft copies the base's head for every new adapter; re-draw it, so each reward
        model starts from its own random head, like a fresh ``from_pretrained`` one."""
        std = float(getattr(self.base.config, "initializer_range", 0.02))
        assert self.model is not None
        for module in self.model.modules():
            heads = getattr(module, "modules_to_save", None)
            if isinstance(heads, torch.nn.ModuleDict) and name in heads:
                for sub in heads[name].modules():
                    if isinstance(sub, torch.nn.Linear):
                        with torch.no_grad():
                            sub.weight.normal_(0.0, std)
                            if sub.bias is not None:
                                sub.bias.zero_()


class WithoutAdapter(torch.nn.Module):
    """A peft model with its adapters off: the policy's reference on the same base.

    Callable like a causal LM (``input_ids``, ``attention_mask``), with ``device``, ``eval``
    and ``generate``: what :func:`pluralign.training.generation.kl_to_reference` and
    :func:`~pluralign.training.generation.sample_rollouts` need."""

    def __init__(self, model: PeftModel) -> None:
        super().__init__()
        self.peft = model

    @property
    def device(self) -> torch.device:
        return self.peft.device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.peft.disable_adapter():
            return self.peft(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Sampling from the reference (the SFT answers), on the same base."""
        with self.peft.disable_adapter():
            return self.peft.generate(*args, **kwargs)
