from events.schema_export import SCHEMA_DIR, generated


def test_committed_schemas_match_the_models() -> None:
    expected = generated()
    committed = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.schema.json")}
    assert committed.keys() == expected.keys(), "run `python -m events.schema_export`"
    for name, text in expected.items():
        assert committed[name] == text, f"{name} drifted: run `python -m events.schema_export`"
