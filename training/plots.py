"""Training-curve plot: the loss per step and the dev metrics after each epoch, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_training_curve(
    losses: list[float], dev_history: list[dict[str, float]], path: Path, title: str
) -> Path:
    """Write a two-panel PNG (loss, dev P@1 / nDCG@10 / R@100) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, dev_ax) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(1, len(losses) + 1)
    loss_ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="batch loss")
    if len(losses) >= 20:
        window = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        loss_ax.plot(steps[window - 1 :], smooth, color="#08519c", label=f"mean of {window}")
    loss_ax.set(xlabel="step", ylabel="loss per query", title="training loss (BCE + text softmax)")
    loss_ax.legend()
    for name in ("P@1", "nDCG@10", "R@100"):
        points = [(h["epoch"], h[name]) for h in dev_history if name in h]
        if points:
            epochs, values = zip(*points, strict=True)
            dev_ax.plot(epochs, values, marker="o", label=name)
    dev_ax.set(
        xlabel="epoch\n(shared label tower: products without training queries\n"
        "are re-embedded after the last epoch only)",
        ylabel="dev score",
        title="dev split (exact search)",
    )
    dev_ax.xaxis.get_major_locator().set_params(integer=True)
    if dev_history:
        dev_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mach_curve(epoch_losses: dict[int, list[float]], path: Path, title: str) -> Path:
    """Write a PNG of every MACH head's mean training loss per epoch and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rep, losses in sorted(epoch_losses.items()):
        ax.plot(np.arange(1, len(losses) + 1), losses, linewidth=0.9, label=f"head {rep}")
    ax.set(xlabel="epoch", ylabel="mean loss per query", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(epoch_losses) <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
