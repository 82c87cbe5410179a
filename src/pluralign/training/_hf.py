"""The one place that decides how a ``transformers.Trainer`` reports progress."""

from __future__ import annotations

from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils.notebook import NotebookProgressCallback


def quiet(trainer: Trainer) -> None:
    """No bar and no printed logs: the caller shows its own progress (PPO chunks, EM)."""
    for cb in (NotebookProgressCallback, ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)


def use_text_progress(trainer: Trainer) -> None:
    """Give a ``transformers.Trainer`` a plain tqdm bar even inside a Jupyter kernel.

    Under papermill the kernel counts as a notebook, so the Trainer draws an HTML widget
    that ``dvc repro`` never shows; the text bar reaches the console (papermill streams the
    kernel's stderr) and stays coarse in the executed copy (``TQDM_MININTERVAL``).
    """
    trainer.remove_callback(NotebookProgressCallback)
    if not any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(ProgressCallback)
