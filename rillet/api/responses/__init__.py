"""The OpenAI Responses API (POST /v1/responses), a front on the chat pipeline's stages."""
from rillet.api.responses.route import router

__all__ = ["router"]
