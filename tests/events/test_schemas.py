from types import ModuleType

import pytest

import events.schema_export
import stagefiles.schema_export


@pytest.mark.parametrize("export", [events.schema_export, stagefiles.schema_export],
                         ids=lambda m: m.__name__)
def test_committed_schemas_match_the_models(export: ModuleType) -> None:
    expected = export.generated()
    committed = {p.name: p.read_text() for p in export.SCHEMA_DIR.glob("*.schema.json")}
    run = f"run `python -m {export.__name__}`"
    assert committed.keys() == expected.keys(), run
    for name, text in expected.items():
        assert committed[name] == text, f"{name} drifted: {run}"
