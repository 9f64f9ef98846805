"""Model files in, a runnable forward, tokenizer and chat template out."""
from rillet.model.errors import ChatTemplateError, ModelLoadError
from rillet.model.loader import LoadedModel, default_model_path, load_model

__all__ = ["ChatTemplateError", "LoadedModel", "ModelLoadError", "default_model_path", "load_model"]
