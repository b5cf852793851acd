"""Set-at-a-time inserts and membership reads, written as plain SQL.

A push writes hundreds of commit, snapshot and delta rows and asks which of
thousands of object ids a repo holds. Peewee builds such statements value by
value in Python: a profile of a 500-commit push spent more time there
(``_generate_insert``, ``Context.value``) than in the database. Here each
statement's text is built once per batch size and its parameters are a flat
list, so the database does the work. Values are converted by the fields'
own ``db_value``; a ``JsonText`` (a document already serialised while it was
checked, ``jsonlike.json_text``) is stored as it is. Works on SQLite (3.24+)
and PostgreSQL alike: ``ON CONFLICT DO NOTHING`` and the database's own
parameter marker.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import peewee as pw

# Bound parameters per statement: under SQLite's historic limit of 999 variables.
MAX_PARAMS = 900


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def insert_ignoring_duplicates(model: type[pw.Model], names: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Insert ``rows`` (values in the order of the field ``names``); rows whose key exists are skipped."""
    fields = [model._meta.fields[name] for name in names]
    converters = [field.db_value for field in fields]
    per_statement = max(1, MAX_PARAMS // len(fields))
    database = model._meta.database
    head = (f"INSERT INTO {_quote(model._meta.table_name)} ({', '.join(_quote(f.column_name) for f in fields)}) "
            "VALUES ")
    one_row = "(" + ", ".join([database.param] * len(fields)) + ")"
    batch: list[Sequence] = []

    def flush() -> None:
        params = [convert(value) for row in batch for convert, value in zip(converters, row, strict=True)]
        database.execute_sql(head + ", ".join([one_row] * len(batch)) + " ON CONFLICT DO NOTHING", params)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) == per_statement:
            flush()
    if batch:
        flush()


def present(model: type[pw.Model], repo_id: str, digests: Iterable[str]) -> set[str]:
    """Which of ``digests`` have a row of ``model`` (keyed by repo and digest) for this repo."""
    return {row[0] for row in rows_by_digest(model, repo_id, digests, ("digest",))}


def rows_by_digest(model: type[pw.Model], repo_id: str, digests: Iterable[str],
                   names: Sequence[str]) -> Iterator[tuple]:
    """The field ``names`` (raw column values) of this repo's rows of ``model`` whose digest is one of
    ``digests``; absent digests give no row. ``MAX_PARAMS`` digests per statement."""
    wanted = sorted(set(digests))
    database = model._meta.database
    table = _quote(model._meta.table_name)
    columns = ", ".join(_quote(model._meta.fields[name].column_name) for name in names)
    repo_column = _quote(model._meta.fields["repo"].column_name)
    digest_column = _quote(model._meta.fields["digest"].column_name)
    step = MAX_PARAMS - 1
    for start in range(0, len(wanted), step):
        chunk = wanted[start:start + step]
        marks = ", ".join([database.param] * len(chunk))
        yield from database.execute_sql(
            f"SELECT {columns} FROM {table} WHERE {repo_column} = {database.param} AND {digest_column} IN ({marks})",
            [repo_id, *chunk]).fetchall()
