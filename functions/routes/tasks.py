"""The model tasks Assay evaluates, as their declarations (``shared.modeltasks``) say."""

from __future__ import annotations

from functions.routing import Router
from functions.services import Call
from shared.api import TaskInfo, TaskList
from shared.metrics import describe
from shared.modeltasks import SPECS

router = Router("tasks", "The model tasks Assay evaluates: accepted models and datasets, config schema, metrics.")
# Built once: the table is fixed for the life of the process.
TASKS = TaskList(
    tasks=[TaskInfo.model_validate({**spec.describe(), "metrics": describe(spec.metrics)}) for spec in SPECS.values()]
)


@router.get("/v1/tasks", scope=None, response=TaskList)
def list_tasks(call: Call) -> TaskList:
    """Every model task: which models and dataset formats it accepts, its config and its metrics."""
    return TASKS
