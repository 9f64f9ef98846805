from __future__ import annotations

from tests.conftest import MODEL_NAME


def test_models_list_shape(http, client):
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL_NAME]
    card = body["data"][0]
    assert card["object"] == "model" and isinstance(card["created"], int) and card["owned_by"]
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_unknown_model_card_is_404(http):
    response = http.get("/v1/models/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_health(http):
    assert http.get("/health").json() == {"status": "ok"}
