"""Training: the loop, losses, optimizer and scheduler, checkpoints and resume, early stopping."""
