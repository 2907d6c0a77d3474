"""Every malformed LLMDeployment of the shared table is rejected by the models, naming the field.

The control-plane tier runs the same table against the real API server (tests/controlplane/test_crd.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.malformed import MALFORMED_CASES, VALID

from tidal.api import validation_errors


def test_table_is_large_and_ids_are_unique() -> None:
    ids = [case_id for case_id, _, _ in MALFORMED_CASES]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)


def test_the_base_document_is_valid() -> None:
    assert validation_errors(VALID) == []


@pytest.mark.parametrize(
    ("document", "field"), [pytest.param(doc, fld, id=case_id) for case_id, doc, fld in MALFORMED_CASES]
)
def test_malformed_document_is_rejected_naming_the_field(document: dict[str, Any], field: str) -> None:
    errors = validation_errors(document)
    assert errors, "accepted"
    assert field in "\n".join(errors), errors
