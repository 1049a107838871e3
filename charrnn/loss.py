"""Cross-entropy of the output layer in bounded memory, whatever the vocabulary.

The loss of a window needs the logits of every (stream, position, symbol): with a
60,000-symbol vocabulary and a batch of 32 x 128 that is 983 MB of floats, and
autograd keeps it (and the softmax of the same size) until the backward pass.
`head_cross_entropy` computes the same loss a chunk of tokens at a time: for each
chunk it builds the logits, takes the loss and, when gradients are wanted, the
gradients with respect to the hidden states, the weight and the bias at once,
then drops the logits. Without gradients (evaluation) the chunks are blocks of
up to `ROWS_PER_BLOCK` tokens by a slice of the vocabulary, with the log-sum-exp
of the blocks combined at the end: many tokens per read of the output weights
(92 MB for 60,000 symbols) make the matrix product much faster than chunks of
69 whole rows (docs/experiments/2026-11-29-big-vocabulary.md has the measurement). Only small
vocabularies (batch x window x vocab under `MAX_CHUNK_LOGITS`) take the plain
path, which is exactly the unchunked `F.cross_entropy(head(hidden))` and its speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Logits built at once: 2**22 floats (16 MB in fp32) bound the memory a chunk needs (its
# logits, softmax and gradient); a 60,000-symbol chunk still has 69 tokens for its matmul.
MAX_CHUNK_LOGITS = 1 << 22
# Tokens per block of the no-gradient path (`_blocked_loss`); its vocabulary slices are
# MAX_CHUNK_LOGITS // ROWS_PER_BLOCK wide. Enough tokens that one read of a slice of the output
# weights serves many of them, which measured much faster than whole rows of a few tokens for a
# 60,000-symbol vocabulary (docs/experiments/2026-11-29-big-vocabulary.md).
ROWS_PER_BLOCK = 1024


def head_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    max_chunk_logits: int | None = None,
) -> torch.Tensor:
    """`F.cross_entropy(head(hidden).float(), targets)` without building every logit at once.

    `hidden` is (..., hidden_size), `targets` the matching (...) int64 ids; targets
    equal to `ignore_index` count for nothing. `reduction` is "mean" (over the
    counted targets) or "sum". Under autocast the logits are computed in the
    autocast dtype and the loss in fp32, as the plain expression does. At most
    `max_chunk_logits` (default `MAX_CHUNK_LOGITS`) logits exist at once.
    """
    max_chunk_logits = max_chunk_logits or MAX_CHUNK_LOGITS
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    vocab_size = head.weight.shape[0]
    if hidden.shape[0] * vocab_size <= max_chunk_logits:
        return F.cross_entropy(head(hidden).float(), targets, ignore_index=ignore_index, reduction=reduction)
    chunk_tokens = max(1, max_chunk_logits // vocab_size)
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, head.weight, head.bias)
    )
    if wants_grad:
        total = _ChunkedHeadLoss.apply(hidden, head.weight, head.bias, targets, ignore_index, chunk_tokens)
    else:
        total = _blocked_loss(hidden, head.weight, head.bias, targets, ignore_index, max_chunk_logits)
    if reduction == "sum":
        return total
    # As F.cross_entropy: the mean over counted targets (nan when none is counted).
    return total / (targets != ignore_index).sum()


def _chunked_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    chunk_tokens: int,
):
    """Summed loss over all tokens, and its gradients for hidden, weight and bias."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden)
    # Accumulated over chunks in fp32 (at least as precise as one big matmul).
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        hidden_chunk = hidden[start : start + chunk_tokens]
        target_chunk = targets[start : start + chunk_tokens]
        logits = F.linear(hidden_chunk, weight, bias)  # the autocast dtype under autocast
        counted = target_chunk != ignore_index
        safe_targets = torch.where(counted, target_chunk, torch.zeros_like(target_chunk))
        log_probs = torch.log_softmax(logits.float(), dim=1)
        picked = log_probs.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
        total = total - torch.where(counted, picked, torch.zeros_like(picked)).sum()
        # d(sum of -log softmax[target]) / d logits = softmax - one_hot(target), on counted rows.
        grad_logits = log_probs.exp_()
        grad_logits.scatter_add_(1, safe_targets.unsqueeze(1), torch.full_like(picked, -1.0).unsqueeze(1))
        grad_logits.mul_(counted.unsqueeze(1))
        compute = grad_logits.to(logits.dtype)  # what autograd would carry back through the linear layer
        grad_hidden[start : start + chunk_tokens] = (compute @ weight.to(logits.dtype)).to(hidden.dtype)
        if compute.dtype == grad_weight.dtype:  # in place: no vocab x hidden temporary per chunk
            grad_weight.addmm_(compute.t(), hidden_chunk.to(compute.dtype))
        else:
            grad_weight += (compute.t() @ hidden_chunk.to(compute.dtype)).float()
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
        del logits
    grads = (
        grad_hidden,
        grad_weight.to(weight.dtype),
        None if bias is None or grad_bias is None else grad_bias.to(bias.dtype),
    )
    return total, grads


def _blocked_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    ignore_index: int,
    max_chunk_logits: int,
) -> torch.Tensor:
    """Summed loss without gradients, in blocks of tokens x vocabulary slices of at most `max_chunk_logits`.

    Each token's log-sum-exp over the vocabulary is the log-sum-exp of its per-slice ones, so
    the result equals the whole-row computation up to float rounding.
    """
    rows_per_block = min(hidden.shape[0], ROWS_PER_BLOCK, max_chunk_logits)
    vocab_slice = max(1, max_chunk_logits // rows_per_block)
    vocab_size = weight.shape[0]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows_per_block):
        hidden_block = hidden[start : start + rows_per_block]
        target_block = targets[start : start + rows_per_block]
        slice_sums = []
        target_logit = torch.zeros(hidden_block.shape[0], dtype=torch.float32, device=hidden.device)
        for first in range(0, vocab_size, vocab_slice):
            last = min(vocab_size, first + vocab_slice)
            logits = F.linear(
                hidden_block, weight[first:last], None if bias is None else bias[first:last]
            ).float()
            slice_sums.append(torch.logsumexp(logits, dim=1))
            inside = (target_block >= first) & (target_block < last)
            column = torch.where(inside, target_block - first, torch.zeros_like(target_block))
            target_logit += torch.where(inside, logits.gather(1, column.unsqueeze(1)).squeeze(1), 0.0)
            del logits
        log_total = torch.logsumexp(torch.stack(slice_sums, dim=1), dim=1)
        counted = target_block != ignore_index
        total = total + torch.where(counted, log_total - target_logit, 0.0).sum()
    return total


class _ChunkedHeadLoss(torch.autograd.Function):
    """The summed loss; its gradients are computed in the forward pass, chunk by chunk, scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, chunk_tokens):
        total, grads = _chunked_loss(hidden, weight, bias, targets, ignore_index, chunk_tokens)
        # Kept on ctx, not saved for backward, so backward can scale them in place (the weight's
        # gradient is as big as the output layer) and let go of them: one backward pass only.
        ctx.grads = grads
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise RuntimeError("head_cross_entropy supports one backward pass per forward")
        scaled = tuple(None if grad is None else grad.mul_(grad_total.to(grad.dtype)) for grad in ctx.grads)
        ctx.grads = None
        return (*scaled, None, None, None)
