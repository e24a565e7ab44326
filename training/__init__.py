"""Training: typed arguments, the Trainer subclass, and the loss-curve plot."""
