"""Model files in, a runnable forward, tokenizer and chat template out. Importing it does not import
torch (the API process never does); load_model does, when called."""
from rillet.model.errors import ChatTemplateError, ModelLoadError
from rillet.model.loader import LoadedModel, default_model_path, load_model

__all__ = ["ChatTemplateError", "LoadedModel", "ModelLoadError", "default_model_path", "load_model"]
