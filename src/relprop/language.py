"""Language models: explain a token's logit (or a sequence class) in terms of the input tokens.

Works with Hugging Face models through their public interface only (``get_input_embeddings`` and
``inputs_embeds=``), so nothing depends on a transformers version's internals: relevance is computed for the input
embeddings and summed per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .explanation import Explanation
from .lrp import LRP


@dataclass
class TokenExplanation:
    tokens: torch.Tensor  # (N, T) token ids
    relevance: torch.Tensor  # (N, T): relevance per token (the embedding's relevance summed)
    explanation: Explanation  # the full explanation; .relevance is (N, T, D), per embedding dimension
    target: torch.Tensor  # (N,) explained token id, or class index

    def html(self, tokenizer=None, **options) -> str:
        """The tokens coloured by relevance, as an HTML page (relprop.viz.text)."""
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


def explain_tokens(model: torch.nn.Module, input_ids: torch.Tensor, target=None, position: int = -1,
                   composite="attnlrp", attention_mask: torch.Tensor | None = None, **lrp_options) -> TokenExplanation:
    """Relevance of each input token for one output: for a causal LM the logit of token ``target`` (an id, one id
    per sample, or None for the predicted one) at ``position``; for a sequence classifier the class ``target``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.dim() != 2:
        raise ValueError("input_ids must be an integer tensor shaped (batch, tokens), e.g. tokenizer(..., "
                         "return_tensors='pt').input_ids")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        embeddings = embed(input_ids)
    extra = {} if attention_mask is None else {"attention_mask": attention_mask}

    def forward(module, inputs_embeds):
        return _logits(module(inputs_embeds=inputs_embeds, **extra))

    with torch.no_grad():
        logits = forward(model, embeddings)
    batch = input_ids.shape[0]
    if logits.dim() == 3:  # (N, T, V): the logit of one token at one position
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
