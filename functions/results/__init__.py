"""Results you can query: an evaluation's Parquet result set, fetched into a bounded local
cache and queried with DuckDB (per-instance rows, per-class metrics, the confusion matrix,
further metrics with bootstrap intervals, comparisons and leaderboards).

Nothing here knows flask: ``service`` holds the plain functions the routes call.
"""
