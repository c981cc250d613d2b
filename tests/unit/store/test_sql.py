"""The append statement's arguments are named after the SQL function's parameters, in its order."""

from __future__ import annotations

import re

import attrs

from eventbus._store._sql import APPEND_SQL, BatchArguments
from eventbus.testing import schema_sql


def test_the_batch_arguments_are_the_append_functions_parameters_in_order() -> None:
    found = re.search(
        r"CREATE (?:OR REPLACE )?FUNCTION eventbus\.append_events\((.*?)\)\s*RETURNS", schema_sql(), flags=re.S
    )
    assert found is not None
    parameters = [line.split()[0] for line in found.group(1).strip().splitlines()]
    assert parameters == [f"p_{field.name}" for field in attrs.fields(BatchArguments)]
    assert APPEND_SQL.count("$") == len(parameters) == 12


def test_the_parameters_are_the_fields_values_in_the_fields_order() -> None:
    fields = attrs.fields(BatchArguments)
    values = [object() for _ in fields]  # one distinct value per field: any mix-up shows
    arguments = BatchArguments(*values)
    assert arguments.parameters() == tuple(values) == attrs.astuple(arguments, recurse=False)
