"""Assay's workers: ``python -m workers <task> <entity id> --attempt N``.

Pure, locally testable modules (``archive``, ``images``, ``verify``, ``ingest``,
``evaluate``, ``metrics``) do the work on local files; ``jobs`` moves inputs and outputs
between them and Cloud Storage; ``runner`` owns the attempt's lifecycle in Datastore.
The small model and datasets the tests use are local development: ``devstack.digits``.
"""
