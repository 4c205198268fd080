"""Response views are allow-lists: a reply shows the fields its view names and nothing else,
so a field added to an entity stays private until someone decides otherwise."""

from __future__ import annotations

import pytest

from shared import api
from shared.entities import ApiKey, Dataset, Evaluation, Model
from shared.events import Event
from shared.webhooks import Webhook, WebhookDelivery

VIEWS = [
    (Model, api.ModelView),
    (Dataset, api.DatasetView),
    (Evaluation, api.EvaluationView),
    (ApiKey, api.ApiKeyView),
    (Event, api.EventView),
    (Webhook, api.WebhookView),
    (WebhookDelivery, api.DeliveryView),
]
# What only the platform needs, which no view may show.
PRIVATE = {
    "lease_owner",
    "lease_expires_at",
    "heartbeat_at",
    "job_name",
    "upload_object",
    "result_prefix",
    "secret_hash",
    "secret_salt",
}


class ModelWithANewField(Model):
    internal_note: str = "for the platform's eyes only"


def a_model(cls: type[Model]) -> Model:
    return cls(
        id=Model.new_id(),
        account="acc_a",
        name="vit",
        declared_size=10,
        content_type="application/zip",
        upload_object="uploads/models/x/model.zip",
        lease_owner="daemon-1",
        job_name="job-1",
    )


def test_a_field_added_to_an_entity_stays_out_of_its_view():
    view = api._view_of(ModelWithANewField, "ModelView", public=api.ModelView.model_fields)
    assert "internal_note" not in view.model_fields
    shown = view.model_validate(a_model(ModelWithANewField).model_dump()).model_dump()
    assert "internal_note" not in shown
    assert list(shown) == list(api.ModelView.model_fields)


@pytest.mark.parametrize(("entity", "view"), VIEWS, ids=[v.__name__ for _, v in VIEWS])
def test_every_view_shows_a_subset_of_its_entity_in_the_entitys_order_and_nothing_private(entity, view):
    fields = list(view.model_fields)
    assert fields == [n for n in entity.model_fields if n in view.model_fields]
    assert not PRIVATE & set(fields)


def test_a_view_naming_a_field_its_entity_lacks_is_refused_at_import():
    with pytest.raises(ValueError, match="no_such_field"):
        api._view_of(Model, "BrokenView", public=("id", "no_such_field"))
