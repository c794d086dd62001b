"""The low-level training loop and what it needs: losses, optimizer and scheduler, checkpoints and resume,
early stopping, memory estimate, compilation. The recipe that uses them is ``tuneforge.recipe``."""
