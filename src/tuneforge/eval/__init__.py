"""Evaluation: metrics, base-versus-tuned comparison, forgetting, bias probe."""
