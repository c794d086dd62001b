"""Before training: should I fine-tune (assess), how on this machine (plan), with which settings (sweep), and how deep to freeze (probe)."""
