"""Every router the API serves, in the order the OpenAPI document lists them.

To add routes: write a module here with ``router = Router("tag")`` and handlers declared
with ``@router.get/post/delete(path, scope=…, response=…, …)``, then append its router to
``ROUTERS``.
"""

from __future__ import annotations

from functions.results.routes import router as results_router
from functions.routes import api_keys, datasets, evaluations, meta, models, tasks, webhooks

ROUTERS = [
    meta.router,
    tasks.router,
    api_keys.router,
    models.router,
    datasets.router,
    evaluations.router,
    results_router,
    webhooks.router,
]
