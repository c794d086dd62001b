"""Models: find a pre-trained model (bundled alias, folder, GGUF file, hub id) and load it for a task."""

from tuneforge.models.catalogue import MODELS, BundledModel
from tuneforge.models.load import load_causal_lm, load_classifier, load_tokenizer, resolve_model

__all__ = ["MODELS", "BundledModel", "load_causal_lm", "load_classifier", "load_tokenizer", "resolve_model"]
