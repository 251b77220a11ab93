"""The ``text`` encoder: a Hugging Face transformers model (BERT and the like), pooled to one vector.

Inputs are long tensors (B, 2, L): row 0 the token ids, row 1 the attention mask (1 = token, 0 = pad).
Features are the hidden state of the first token (``cls``) or the mean over unmasked tokens (``mean``);
``out_dim`` is the model's hidden size.

Which model: ``model.text_model`` (a local folder written by ``save_pretrained`` or a hub name; default
``bert-base-uncased``) and ``model.text_pool`` (``cls`` or ``mean``, default ``cls``). Loading goes
through ``AutoModel.from_pretrained`` and so honours ``HF_HUB_OFFLINE`` and the Hugging Face cache.

transformers is an optional dependency: it is imported only when a text encoder or tokenizer is built,
and a missing install is reported as one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, DataError
from .encoders import ENCODERS

__all__ = ["DEFAULT_TEXT_MODEL", "POOLINGS", "TextEncoder", "build_tokenizer", "tokenize"]

DEFAULT_TEXT_MODEL = "bert-base-uncased"
DEFAULT_POOL = "cls"
POOLINGS = ("cls", "mean")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "the text encoder needs the transformers package: install modgap[text] (pip install transformers)"
        ) from None
    return transformers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def load_text_model(path: str) -> nn.Module:
    """``AutoModel.from_pretrained(path)`` in float32, or a one-line DataError naming ``path``."""
    transformers = _transformers()
    try:
        model = transformers.AutoModel.from_pretrained(path)
    except Exception as exc:  # OSError, ValueError, HF hub errors, ... all mean "cannot load this"
        raise DataError(
            f"{path}: cannot load a transformers model ({type(exc).__name__}: {_one_line(exc)}); "
            f"install transformers and give a local folder written by save_pretrained, "
            f"or a hub name with network access"
        ) from None
    return model.float()


class TextEncoder(nn.Module):
    """A transformers encoder on (B, 2, L) token ids + attention mask, pooled to (B, hidden_size)."""

    def __init__(self, model: nn.Module, pool: str = DEFAULT_POOL) -> None:
        super().__init__()
        if pool not in POOLINGS:
            raise ConfigError(f"unknown model.text_pool '{pool}' (choose from: {', '.join(POOLINGS)})")
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise DataError("the text model has no config.hidden_size; it is not an encoder this can pool")
        self.model = model
        self.pool = pool
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2, L) long
        ids, mask = x[:, 0].long(), x[:, 1].long()
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
        if self.pool == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@ENCODERS.register("text")
def text(input_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module:
    """A transformers model (model.text_model, default bert-base-uncased), CLS or masked-mean pooled."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 2 or shape[0] != 2:
        raise ConfigError(
            f"encoder 'text' expects (2, L) token ids + attention mask per sample, got {shape}; "
            f"choose another with model.encoders"
        )
    path = getattr(cfg, "text_model", None) or DEFAULT_TEXT_MODEL
    pool = getattr(cfg, "text_pool", None) or DEFAULT_POOL
    if pool not in POOLINGS:  # before the (possibly slow) load
        raise ConfigError(f"unknown model.text_pool '{pool}' (choose from: {', '.join(POOLINGS)})")
    return TextEncoder(load_text_model(str(path)), pool)


# ---------------------------------------------------------------- helpers for datasets' prepare steps
def build_tokenizer(path: str = DEFAULT_TEXT_MODEL) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, or a one-line DataError naming ``path``."""
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot load a tokenizer ({type(exc).__name__}: {_one_line(exc)}); "
            f"install transformers and give a local folder written by save_pretrained, "
            f"or a hub name with network access"
        ) from None


def tokenize(tokenizer: Any, texts: list[str], max_len: int) -> np.ndarray:
    """Token ids and attention masks of ``texts``, padded or truncated to ``max_len``: int64 (N, 2, max_len)."""
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 2, max_len), dtype=np.int64)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    return np.ascontiguousarray(np.stack([ids, mask], axis=1))
