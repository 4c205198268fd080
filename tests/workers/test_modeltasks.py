"""The task table is complete and is the only place task names live."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from shared.metrics import CLASSIFICATION, LANGUAGE_MODEL
from shared.modeltasks import SPECS
from shared.results import PREDICTION_SCHEMA
from workers.modeltasks import IMPLEMENTATIONS, implementation

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("task", sorted(SPECS))
def test_every_task_has_a_worker_implementation_of_the_three_functions(task):
    module = implementation(task)
    for name, keywords in (
        ("verify_model_archive", set()),
        ("ingest_dataset", {"work_dir", "shape"}),
        ("evaluate", {"dataset_label_names", "config", "on_shard", "on_batch", "other_splits"}),
    ):
        function = getattr(module, name)
        assert callable(function), (task, name)
        assert keywords <= set(inspect.signature(function).parameters), (task, name)
    assert set(IMPLEMENTATIONS) == set(SPECS)


@pytest.mark.parametrize("task", sorted(name for name, spec in SPECS.items() if spec.family == CLASSIFICATION))
def test_prediction_columns_extend_the_result_set_contract(task):
    columns = [c.name for c in SPECS[task].prediction_columns]
    assert columns[: len(PREDICTION_SCHEMA)] == PREDICTION_SCHEMA.names


@pytest.mark.parametrize("task", sorted(name for name, spec in SPECS.items() if spec.family == LANGUAGE_MODEL))
def test_language_model_prediction_shards_are_the_declared_columns(task):
    """Every kind's shards hold the common columns then the kind's, as the task lists them."""
    from shared.modeltasks.text_generation import COMMON_PREDICTIONS, KIND_PREDICTIONS
    from workers.lm.evaluation import prediction_schema

    listed = {c.name for c in SPECS[task].prediction_columns}
    for kind, columns in KIND_PREDICTIONS.items():
        assert prediction_schema(kind).names == [c.name for c in COMMON_PREDICTIONS + columns]
        assert set(prediction_schema(kind).names) <= listed


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


def test_every_file_a_language_model_may_hold_beside_its_weights_is_capped():
    from workers.lm.model import FILE_CAPS

    assert set(FILE_CAPS) == SPECS["text-generation"].model_files
