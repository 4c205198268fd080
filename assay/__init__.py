"""Assay: evaluate machine-learning models on datasets, as a service.

    from assay import Client
    client = Client()                      # ASSAY_URL / ASSAY_API_KEY, or `assay login`
    model = client.models.upload("./my-vit", name="my-vit", wait=True)
    dataset = client.datasets.upload("./digits", name="digits", wait=True)
    [evaluation] = client.evaluations.create(model.id, dataset.id, splits=["test"])
    evaluation.wait()
    print(evaluation.results())

A webhook receiver checks each delivery with ``verify_signature(raw_body, header, secret)``.
"""

from assay.client import Client
from shared.webhooks import SIGNATURE_HEADER, verify_signature

__all__ = ["Client", "SIGNATURE_HEADER", "verify_signature"]
