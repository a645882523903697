"""Row-wise Adagrad: sparse updates of a [rows, d] table with one float of state per row.

ASTRA's classifier vectors are one row per label, and a step's loss touches only the rows of its
sampled label set (positives, mined, importance-sampled and uniform negatives): a few thousand
of up to millions. AdamW over the table keeps two dense moments per weight (4.5 GB at 1M labels
of d = 384, 450 GB at 100M) and, with a dense gradient, touches every row every step. This
optimiser, the one embedding-table systems use (FBGEMM's exact row-wise Adagrad), keeps the
running sum of each row's mean squared gradient and updates only the rows whose gradient is
present, so a step costs O(touched rows · d) and the state is O(rows) whatever the step.

The parameter's gradient should be sparse (`torch.nn.functional.embedding(..., sparse=True)`);
a dense gradient gives the same result on every row (rows whose gradient is zero are neither
moved nor counted), which is what the tests compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class RowwiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per row: for each touched row i with gradient g_i,
    s_i += mean(g_i²) and w_i -= lr · g_i / (√s_i + eps)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError(f"lr: must be > 0, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Update the rows that have a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is None:
                    continue
                rows, values = _touched_rows(weight.grad)
                state = self.state[weight]
                if "sum" not in state:
                    state["sum"] = torch.zeros(
                        weight.shape[0], dtype=weight.dtype, device=weight.device
                    )
                total = state["sum"]
                total.index_add_(0, rows, values.pow(2).mean(dim=1))
                scale = group["lr"] / (total[rows].sqrt() + group["eps"])
                weight.index_add_(0, rows, values * -scale.unsqueeze(1))
        return loss


def _touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row ids, their gradient rows) of a sparse or dense [rows, d] gradient, each row once."""
    if grad.is_sparse and grad.sparse_dim() != 1:  # sparse in every dimension: by rows
        grad = grad.to_dense().to_sparse(sparse_dim=1)
    if grad.is_sparse:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    rows = torch.nonzero(grad.abs().sum(dim=1)).squeeze(1)
    return rows, grad[rows]
