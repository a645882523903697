"""Row-wise Adagrad (`training.rowwise`): sparse updates equal the dense rule on every row."""

from __future__ import annotations

import pytest
import torch

from training.rowwise import RowwiseAdagrad


def dense_rowwise_adagrad(
    weight: torch.Tensor, grads: list[torch.Tensor], lr: float, eps: float = 1e-8
) -> torch.Tensor:
    """The rule written over the whole table with dense gradients, one step per gradient."""
    weight, total = weight.clone(), torch.zeros(weight.shape[0], dtype=weight.dtype)
    for grad in grads:
        total += grad.pow(2).mean(dim=1)
        weight -= lr * grad / (total.sqrt() + eps).unsqueeze(1)
    return weight


def sparse_step_grads(weight: torch.Tensor, batches: list[list[int]]) -> list[torch.Tensor]:
    """Run RowwiseAdagrad on `weight` (in place) with a loss over each batch of rows (repeats
    included), and return each step's gradient, densified."""
    optimizer = RowwiseAdagrad([weight], lr=0.1)
    target = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(1))
    grads = []
    for rows in batches:
        optimizer.zero_grad(set_to_none=True)
        picked = torch.nn.functional.embedding(torch.tensor(rows), weight, sparse=True)
        ((picked @ target).sigmoid().log().neg().sum() + picked.pow(2).sum()).backward()
        assert weight.grad is not None and weight.grad.is_sparse
        grads.append(weight.grad.to_dense().clone())
        optimizer.step()
    return grads


def test_sparse_updates_equal_the_dense_rule_on_every_row() -> None:
    start = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    weight = torch.nn.Parameter(start.clone())
    batches = [[3, 7, 7, 20], [7, 41, 3], [0, 49, 20, 20, 20]]
    grads = sparse_step_grads(weight, batches)
    expected = dense_rowwise_adagrad(start, grads, lr=0.1)
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-6, atol=1e-7)
    untouched = sorted(set(range(50)) - {row for rows in batches for row in rows})
    assert torch.equal(weight.detach()[untouched], start[untouched])  # never moved


def test_a_dense_gradient_gives_the_same_step_and_the_state_is_one_float_per_row() -> None:
    start = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    grad = torch.zeros(20, 4)
    grad[[2, 5, 11]] = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    dense, sparse = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    dense.grad, sparse.grad = grad.clone(), grad.to_sparse()
    optimizers = [RowwiseAdagrad([dense], lr=0.05), RowwiseAdagrad([sparse], lr=0.05)]
    for optimizer in optimizers:
        optimizer.step()
    assert torch.equal(dense.detach(), sparse.detach())
    torch.testing.assert_close(dense.detach(), dense_rowwise_adagrad(start, [grad], lr=0.05))
    assert optimizers[0].state[dense]["sum"].shape == (20,)


def test_a_learning_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lr"):
        RowwiseAdagrad([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.0)
