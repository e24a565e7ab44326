"""What a long run survives, and the rules that stop it: bad samples, non-finite losses, preemption.

- A sample whose image is missing or corrupt, or that no longer fits --max_length, is replaced in its
  batch by the dataset and recorded here; past --max_bad_samples the run stops with one sentence.
- A step whose loss is NaN or inf is reported with its sample ids; its update is skipped; after
  --max_nonfinite_steps such steps in a row the run stops, before it saves anything.
- SIGTERM or SIGUSR1 (what Slurm and Kubernetes send before they kill a job) makes the run save a
  complete checkpoint at the end of the current step and exit with PREEMPTED_EXIT.

The record travels in every checkpoint (trainer_state.json, under stateful_callbacks) and is restored
on resume, so a resumed run counts exactly as an uninterrupted one.
"""

import logging
import math
import signal
import threading

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger(__name__)

PREEMPTED_EXIT = 75  # sysexits' EX_TEMPFAIL: a checkpoint was saved; run the same command again to resume
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXAMPLES = 5  # bad samples named in a stop message


class RunStopped(RuntimeError):
    """A rule stopped the run. The message is one sentence for the user."""


def bad_sample_limit(max_bad_samples: float, n_samples: int) -> int:
    """--max_bad_samples: a count when >= 1, else a fraction of the training set (rounded up)."""
    if max_bad_samples < 0:
        raise ValueError(f"--max_bad_samples must be a count (>= 1) or a fraction in [0, 1), got {max_bad_samples}")
    return int(max_bad_samples) if max_bad_samples >= 1 else math.ceil(max_bad_samples * n_samples)


class RunHealth(TrainerCallback, ExportableState):
    """The run's record of survived faults, merged over all processes, saved in each checkpoint."""

    def __init__(self):
        self.bad_samples: dict[str, str] = {}  # sample id -> why it was skipped
        self.nonfinite_steps = 0  # steps with a non-finite loss, in all
        self.nonfinite_streak = 0  # ... in a row, up to the last step

    def state(self) -> dict:
        # no "args": the limits come from this run's flags, not from the checkpoint's
        return {"args": {}, "attributes": {"bad_samples": self.bad_samples, "nonfinite_steps": self.nonfinite_steps,
                                           "nonfinite_streak": self.nonfinite_streak}}

    def add_bad_samples(self, records: list[tuple[str, str]]):
        for sample_id, why in records:
            if sample_id not in self.bad_samples:
                logger.warning("skipped sample %s: %s", sample_id, why)
            self.bad_samples.setdefault(sample_id, why)

    def check_bad_samples(self, limit: int):
        if len(self.bad_samples) > limit:
            examples = "; ".join(f"{k} ({v})" for k, v in list(self.bad_samples.items())[:EXAMPLES])
            raise RunStopped(f"{len(self.bad_samples)} training samples could not be used, more than "
                             f"--max_bad_samples allows ({limit}); the first: {examples}")

    def end_step(self, nonfinite: bool, limit: int, step: int):
        self.nonfinite_streak = self.nonfinite_streak + 1 if nonfinite else 0
        self.nonfinite_steps += int(nonfinite)
        if nonfinite and self.nonfinite_streak >= limit:
            raise RunStopped(f"the loss was NaN or inf for {self.nonfinite_streak} steps in a row (up to step {step}; "
                             f"--max_nonfinite_steps {limit}); stopped without saving those steps")

    def summary(self) -> str:
        return (f"{len(self.bad_samples)} bad sample(s) skipped, {self.nonfinite_steps} step(s) with a non-finite "
                "loss skipped")


class PreemptionSignal:
    """Catches SIGTERM and SIGUSR1 while installed; `received` names the first one caught."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name
            logger.warning("%s received: saving a checkpoint at the end of this step, then exiting", self.received)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            self._previous = {s: signal.signal(s, self._handle) for s in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
