"""Loss-curve PNG from a run's trainer_state.json:  python -m training.plot RUN_DIR"""

import argparse
import json
import os
import sys

from transformers.trainer_utils import get_last_checkpoint

from common import atomic_file, exits_on

STATE = "trainer_state.json"


def find_state(run_dir: str) -> str:
    path = os.path.join(run_dir, STATE)
    if os.path.isfile(path):
        return path
    last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if last is None:
        raise FileNotFoundError(f"no {STATE} in {run_dir} or its checkpoints")
    return os.path.join(last, STATE)


def plot_curve(steps: list[int], losses: list[float], out: str, title: str,
               learning_rates: list[float] | None = None, log_scale: bool = True, label: str = "training loss",
               ylabel: str = "loss") -> str:
    """Writes a curve (a loss, on a log scale by default; the learning rate on a second axis when given) to `out`,
    atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, losses, color="tab:blue", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if learning_rates:
        lr = ax.twinx()
        lr.plot(steps, learning_rates, color="tab:orange", alpha=0.6, label="learning rate")
        lr.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out


def plot_loss(run_dir: str) -> str:
    """Writes RUN_DIR/loss.png (training loss per logged step, and learning rate) and returns its path."""
    with open(find_state(run_dir)) as f:
        history = json.load(f)["log_history"]
    logged = [h for h in history if "loss" in h]
    if not logged:
        raise ValueError(f"{run_dir}: the run logged no loss yet")
    rates = [h["learning_rate"] for h in logged] if all("learning_rate" in h for h in logged) else None
    losses = [h["loss"] for h in logged]  # post-training's losses can be 0 or below: then a linear scale
    return plot_curve([h["step"] for h in logged], losses, os.path.join(run_dir, "loss.png"),
                      os.path.basename(os.path.abspath(run_dir)), rates, log_scale=min(losses) > 0)


@exits_on(FileNotFoundError, ValueError)
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="a train.py output folder (or one of its checkpoint-N/)")
    print(plot_loss(parser.parse_args(argv).run_dir))


if __name__ == "__main__":
    sys.exit(main())
