"""Language models: explain a token's logit (or a sequence class) in terms of the input tokens.

Works with Hugging Face models through their public interface only (``get_input_embeddings`` and
``inputs_embeds=``), so nothing depends on a transformers version's internals: relevance is computed for the input
embeddings and summed per token. Any other model names its ``nn.Embedding`` with ``embedding=``: it runs on the
token ids as usual, and the embedding layer's output is replaced by the embeddings being explained.
"""
from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass

import torch

from . import diagnose
from .explanation import Explanation
from .attribution.lrp import LRP


@dataclass
class TokenExplanation:
    """Relevance per input token, with the full explanation behind it.

    Attributes:
        tokens: (N, T) token ids.
        relevance: (N, T) relevance per token (the embedding's relevance summed).
        explanation: The full Explanation; its relevance is (N, T, D), per embedding dimension.
        target: (N,) the explained token id, or class index.
    """
    tokens: torch.Tensor  # (N, T) token ids
    relevance: torch.Tensor  # (N, T): relevance per token (the embedding's relevance summed)
    explanation: Explanation  # the full explanation; .relevance is (N, T, D), per embedding dimension
    target: torch.Tensor  # (N,) explained token id, or class index

    def html(self, tokenizer=None, **options) -> str:
        """The tokens coloured by relevance, as an HTML page (relprop.viz.text).

        Args:
            tokenizer: Decodes token ids into text (a Hugging Face tokenizer); None shows the ids.
            **options: Passed to relprop.viz.text.html.

        Returns:
            The page's HTML.
        """
        from .viz import text

        words = [[tokenizer.decode([int(t)]) if tokenizer is not None else str(int(t)) for t in row]
                 for row in self.tokens]
        body = "\n".join(text.html(row_words, row_relevance, **options)
                         for row_words, row_relevance in zip(words, self.relevance.detach()))
        return text.page(body, title="relprop: token relevance")


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__} without logits; pass a model whose output is a tensor "
                    "or has .logits")


def _embedding(model: torch.nn.Module, embedding) -> tuple[str, torch.nn.Module]:
    """(name, module) of the embedding layer given as a module or its qualified name."""
    modules = dict(model.named_modules())
    if isinstance(embedding, str):
        if embedding not in modules:
            close = difflib.get_close_matches(embedding, list(modules), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"embedding: the model has no module named {embedding!r}{hint}")
        return embedding, modules[embedding]
    if isinstance(embedding, torch.nn.Module):
        names = [name for name, module in modules.items() if module is embedding]
        if not names:
            raise ValueError("embedding: that module is not part of the model; pass one of its own modules or its "
                             "name")
        return names[0], embedding
    raise TypeError(f"embedding must be the model's embedding module or its name, got {type(embedding).__name__}")


def _substituting(layer: torch.nn.Module, name: str, input_ids, extra: dict):
    """A forward(model, embeddings) that runs the model on its ids with ``layer``'s output replaced."""

    def forward(module, embeddings):
        calls = []

        def substitute(_, args, output):
            calls.append(output)
            return embeddings

        handle = layer.register_forward_hook(substitute)
        try:
            out = module(input_ids, **extra)
        finally:
            handle.remove()
        if len(calls) != 1 or tuple(calls[0].shape) != tuple(embeddings.shape):
            raise ValueError(f"the embedding layer {name!r} ran {len(calls)} times on the model's input; "
                             "explain_tokens needs it to run once, giving one embedding per token")
        return _logits(out)

    return forward


def explain_tokens(model: torch.nn.Module, input_ids: torch.Tensor, target=None, position: int = -1,
                   composite="attnlrp", attention_mask: torch.Tensor | None = None, *, embedding=None,
                   model_inputs: dict | None = None, **lrp_options) -> TokenExplanation:
    """Relevance of each input token for one output.

    For a causal LM the logit of token ``target`` at ``position``; for a sequence classifier the class ``target``.

    Args:
        model: A language model: a Hugging Face model, or any model with embedding= named.
        input_ids: (batch, tokens) integer token ids.
        target: The token id explained (one id, one per sample, or None for the predicted one), or the class of a
            sequence classifier.
        position: The position whose next-token logit is explained (causal LMs).
        composite: The composite, as LRP takes it (default AttnLRP).
        attention_mask: (batch, tokens) mask passed to the model.
        embedding: For models without ``get_input_embeddings`` (not Hugging Face), the nn.Embedding whose output is
            explained, or its qualified name.
        model_inputs: Further keyword inputs passed to every model call, e.g. ``{"token_type_ids": ...,
            "position_ids": ...}``.
        **lrp_options: Passed to LRP (strict, canonizers, composite parameters).

    Returns:
        A TokenExplanation.

    Raises:
        ValueError: for input_ids that are not (batch, tokens) integers, an unknown embedding name, or an
            attention_mask given twice.
        TypeError: for a model output without logits, or model_inputs that is not a dict.
    """
    model = diagnose.model_to_explain(model)
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dim() != 2:
        raise ValueError("input_ids must be an integer tensor shaped (batch, tokens), e.g. tokenizer(..., "
                         "return_tensors='pt').input_ids")
    if model_inputs is not None and not isinstance(model_inputs, dict):
        raise TypeError(f"model_inputs must be a dict of keyword inputs, got {type(model_inputs).__name__}")
    extra = dict(model_inputs or {})
    if attention_mask is not None:
        if "attention_mask" in extra:
            raise ValueError("attention_mask given twice: as an argument and in model_inputs")
        extra["attention_mask"] = attention_mask
    try:
        position = operator.index(position)
    except TypeError:
        raise TypeError(f"position must be an int (a token position, -1 for the last), got {position!r}") from None
    if embedding is not None:
        name, layer = _embedding(model, embedding)
        forward = _substituting(layer, name, input_ids, extra)
    elif hasattr(model, "get_input_embeddings"):
        layer = model.get_input_embeddings()

        def forward(module, inputs_embeds):
            return _logits(module(inputs_embeds=inputs_embeds, **extra))
    else:
        found = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding)]
        listed = f" (its embedding layers: {', '.join(repr(n) for n in found)})" if found else ""
        raise TypeError(f"{type(model).__name__} has no get_input_embeddings() (it is not a Hugging Face model): pass "
                        f"embedding=, the nn.Embedding to explain from or its name{listed}")
    with torch.no_grad():
        embeddings = layer(input_ids)
        logits = forward(model, embeddings)
    batch = input_ids.shape[0]
    if logits.dim() == 3:  # (N, T, V): the logit of one token at one position
        length = logits.shape[1]
        if not -length <= position < length:
            raise ValueError(f"position {position} is out of range for {length} tokens; use 0..{length - 1}, or "
                             f"-{length}..-1 counted from the end")
        column = logits[:, position]
        index = column.argmax(-1) if target is None else torch.as_tensor(target, device=logits.device).long()
        index = index.expand(batch) if index.dim() == 0 else index
        if index.shape != (batch,) or bool(((index < 0) | (index >= logits.shape[-1])).any()):
            raise ValueError(f"target must be None, a token id in 0..{logits.shape[-1] - 1}, or one id per sample")
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[torch.arange(batch), position % logits.shape[1], index] = True
        selector = mask
    else:
        selector = target
    lrp = LRP(model, composite, forward=forward, **lrp_options)
    explanation = lrp(embeddings, target=selector)
    if logits.dim() != 3:
        index = explanation.target
    return TokenExplanation(input_ids, explanation.relevance.sum(-1), explanation, index)
