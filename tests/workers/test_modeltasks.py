"""The task table is complete and is the only place task names live."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from shared.modeltasks import SPECS
from shared.results import PREDICTION_SCHEMA
from workers.modeltasks import IMPLEMENTATIONS, implementation

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("task", sorted(SPECS))
def test_every_task_has_a_worker_implementation_of_the_three_functions(task):
    module = implementation(task)
    for name, keywords in (
        ("verify_model_archive", set()),
        ("ingest_dataset", {"work_dir"}),
        ("evaluate", {"dataset_label_names", "config", "on_shard", "on_batch"}),
    ):
        function = getattr(module, name)
        assert callable(function), (task, name)
        assert keywords <= set(inspect.signature(function).parameters), (task, name)
    assert set(IMPLEMENTATIONS) == set(SPECS)


@pytest.mark.parametrize("task", sorted(SPECS))
def test_prediction_columns_extend_the_result_set_contract(task):
    columns = [c.name for c in SPECS[task].prediction_columns]
    assert columns[: len(PREDICTION_SCHEMA)] == PREDICTION_SCHEMA.names


def test_no_part_but_the_table_names_a_task():
    """The daemon, the functions and the workers read the table; none of them branches on a
    task's name: no string in their code is one (the workers' table of implementations is
    the one exception)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in ("daemon", "functions", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "modeltasks.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in SPECS
    ]
    assert offenders == []


def test_every_tokenizer_file_a_text_model_may_hold_is_capped():
    from workers.text.model import TOKENIZER_CAPS

    assert set(TOKENIZER_CAPS) == SPECS["text-classification"].model_files
