"""Early stopping on a validation metric, with patience; tracks the best step."""

from __future__ import annotations


class EarlyStopping:
    def __init__(self, patience: int | None, greater_is_better: bool):
        self.patience = patience
        self.greater = greater_is_better
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0

    def update(self, value: float | None, step: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if value is None:
            return False
        better = self.best is None or (value > self.best if self.greater else value < self.best)
        if better:
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_step = state.get("best_step")
        self.bad = state.get("bad", 0)
