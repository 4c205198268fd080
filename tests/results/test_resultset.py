"""The connection that runs queries can read the result set's files and nothing else;
unreadable or off-contract files are a clear ``ResultSetCorrupt``."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from functions.results import queries
from functions.results.resultset import ResultSetCorrupt, ResultSetMissing, opened


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_csv('{secret}')",
        "SELECT * FROM read_text('{secret}')",
        "SELECT * FROM read_parquet('{other}')",
        "SELECT * FROM read_parquet('{results}/../other.parquet')",
        "SELECT * FROM glob('{results}/*')",
        "COPY (SELECT 1) TO '{results}/out.csv'",
        "ATTACH '{results}/x.duckdb'",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "SET lock_configuration = false",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    ],
)
def test_connection_reads_nothing_but_the_result_set(generated, tmp_path, statement):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    sql = statement.format(secret=secret, other=tmp_path / "other.parquet", results=generated.directory)
    with opened(generated.directory, generated.label_names) as rs:
        with pytest.raises(duckdb.Error):
            rs.con.execute(sql)
        assert rs.con.execute("SELECT count(*) FROM predictions").fetchone() == (2000,)
    assert not (generated.directory / "out.csv").exists()


def test_user_text_is_bound_not_spliced(generated):
    from shared.errors import Invalid
    from shared.results_api import InstancesQuery

    with opened(generated.directory, generated.label_names) as rs:
        with pytest.raises(Invalid):
            queries.instances(rs, InstancesQuery(label="x' OR 1=1 --"))


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultSetMissing):
        with opened(tmp_path / "empty", ["a"]):
            pass


def test_garbage_file_is_corrupt(generated):
    (generated.directory / "part-00001.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ResultSetCorrupt):
        with opened(generated.directory, generated.label_names) as rs:
            queries.confusion(rs)


def test_truncated_file_is_corrupt(generated):
    path = generated.directory / "part-00002.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-8:])
    with pytest.raises(ResultSetCorrupt):
        with opened(generated.directory, generated.label_names) as rs:
            queries.classes(rs)


def test_off_contract_columns_are_named(generated):
    for path in generated.directory.glob("part-*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([c if c != "topk_ids" else "top_k_ids" for c in table.column_names]), path)
    with pytest.raises(ResultSetCorrupt) as e:
        with opened(generated.directory, generated.label_names):
            pass
    assert e.value.details["columns"]["topk_ids"] == {"expected": "list<integer>", "found": None}


def test_class_index_beyond_label_names_is_corrupt(generated):
    with pytest.raises(ResultSetCorrupt):
        with opened(generated.directory, generated.label_names[:3]) as rs:
            queries.confusion(rs)
