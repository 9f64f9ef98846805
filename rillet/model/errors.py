"""Errors of the model layer, each with a one-line message meant for the user."""
from __future__ import annotations


class ModelLoadError(Exception):
    """The model file is missing, unreadable, or of a kind rillet cannot run."""


class ChatTemplateError(Exception):
    """The model's chat template failed to render the conversation."""
