"""An inference module's consumer of `model.ready` v2, written from the committed JSON Schema
and the docs alone: it imports nothing of aif-tuning (only kafka-python, the standard library,
transformers and peft), so it proves the contract, not our code.

    python inference_consumer.py BOOTSTRAP TOPIC_PATTERN SERVED_BASE_ID=BASE_DIR OUT_DIR

Reads model.ready v2 events until one arrives, fetches every file of the adapter, checks each
sha256 and the base model's revision, loads the adapter with plain peft, and prints one JSON
line: the model's served name, the files verified and the greedy completion of "Hello".
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import urllib.request
from pathlib import Path

from kafka import KafkaConsumer

READY_V2 = "eu.aifactory.tuning.model.ready.v2"


def first_ready(bootstrap: str, pattern: str) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=120_000,
                             metadata_max_age_ms=1000)
    consumer.subscribe(pattern=pattern)
    try:
        for record in consumer:
            event = json.loads(record.value)
            if event["type"] == READY_V2:
                return event["data"]
    finally:
        consumer.close()
    raise SystemExit("no model.ready v2 event within two minutes")


def fetch(data: dict, out: Path) -> list[str]:
    """Every announced file into `out`, each checked against its announced sha256."""
    base_uri = data["adapter_uri"].rstrip("/") + "/"
    for name, expected in data["files_sha256"].items():
        with urllib.request.urlopen(base_uri + name) as remote:
            body = remote.read()
        if hashlib.sha256(body).hexdigest() != expected:
            raise SystemExit(f"{name}: sha256 differs from the event's")
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(body)
    return sorted(data["files_sha256"])


def revision(base_dir: Path) -> str:
    """As the schema says: sha256 over `<relative path>  <sha256>` lines, sorted by path."""
    files = sorted(p for p in base_dir.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(base_dir)}  {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                    for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def main(bootstrap: str, pattern: str, base: str, out_dir: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    served_id, base_dir = base.split("=", 1)
    data = first_ready(bootstrap, pattern)
    assert re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+\.v[0-9]+", data["served_name"])
    if data["base_model"]["id"] != served_id:
        raise SystemExit(f"event names base {data['base_model']['id']}, we serve {served_id}")
    if data["base_model"]["revision"] != revision(Path(base_dir)):
        raise SystemExit("our copy of the base model is not the revision the adapter needs")
    if data["adapter"]["r"] > 16 or data["adapter"]["modules_to_save"]:
        raise SystemExit("adapter beyond what we serve")
    out = Path(out_dir) / data["served_name"]
    out.mkdir(parents=True)
    verified = fetch(data, out)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32), out).eval()
    ids = tokenizer("Hello", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"served_name": data["served_name"], "verified": verified,
                      "greedy": text}))


if __name__ == "__main__":
    main(*sys.argv[1:])
