"""Recipes on real data: what a partner bringing the public data set each recipe names gets.

    .venv/bin/python -m benchmarks.real_data [--recipe R ...] [--train-rows 400]
        [--eval-rows 150] [--max-steps N] [--early-stopping-metric loss|accuracy]
        [--out benchmarks/results]

For each recipe it takes real rows of its data set from `AIF_EVAL_DATA` (default
`../shared/eval-data`), in the recipe's own columns: training rows and, held out from them
or from the set's validation split, evaluation rows. Test splits are never read, so no
setting is chosen on them. It then runs one job through the whole service (embedded broker,
orchestrator, pre-flight, training and evaluation stages) with `train_file` and `eval_file`
in the tenant's data root, and reports from the stored scores the gate task on the real
rows (`<task>_own`): majority-class and chance baselines, base, tuned, macro-F1, the gate's
paired comparisons with the majority answer and the base (difference, 95% interval, p), the
step early stopping kept and by which figure, training time, and whether tuned beats
majority + 0.05 and base + 0.10 (issue 17's targets). One JSON per run under `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from aif.db.models import Job, Score
from aif.db.session import session_factory
from aif.follow import wait_for_job
from aif.service import Service
from aif.settings import Settings
from aif.tenants import create_tenant
from events.bus import KafkaConfig
from events.client import request_finetune
from events.envelope import job_id_for
from events.recipe import HyperparameterOverrides
from events.signing import SigningKey
from finetune.early_stopping import Validation, kept
from stagefiles.jobspec import PROGRESS_LOG, TRAINING_RESULT, ProgressLine, TrainingResult

EVAL_DATA = Path(os.environ.get("AIF_EVAL_DATA", Path(__file__).resolve().parents[2]
                                / "shared" / "eval-data"))
Rows = list[dict[str, Any]]

# Column conversions to the hub's (the recipes' own) types.
COARSE, FINE = ["OTHER", "OFFENSE"], ["OTHER", "ABUSE", "INSULT", "PROFANITY"]
FUNCTIONS = ["Permission", "Duty", "Consequence", "Objection"]
CLIMATEX_INTS = ("statement_idx", "page_num", "sent_num", "score")


def _csv(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> Rows:
    with path.open(encoding=encoding, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def tweets() -> tuple[Rows, Rows]:
    """Twitter financial news: train split to train on, validation split to score."""
    rows = lambda name: [{"text": r["text"], "label": int(r["label"])}  # noqa: E731
                         for r in _csv(EVAL_DATA / "finance" / name)]
    return (rows("twitter_financial_news_sentiment_train.csv"),
            rows("twitter_financial_news_sentiment_valid.csv"))


def germeval() -> tuple[Rows, Rows]:
    lines = (EVAL_DATA / "media/germeval2018.training.txt").read_text("utf-8").splitlines()
    rows = []
    for line in lines:
        text, coarse, fine = line.split("\t")
        rows.append({"text": text, "coarse": COARSE.index(coarse), "fine": FINE.index(fine)})
    return rows, []


def climatex() -> tuple[Rows, Rows]:
    rows = _csv(EVAL_DATA / "climate/climatex_ipcc_statements_dataset.tsv", "\t")
    train = [r for r in rows if r["split"] == "train"]  # "test" is the hand-cleaned test set
    return [{**r, **{c: int(r[c]) for c in CLIMATEX_INTS}} for r in train], []


def arc_easy() -> tuple[Rows, Rows]:
    read = lambda name: json.loads((EVAL_DATA / "education" / name).read_text("utf-8"))  # noqa: E731
    return read("arc_easy_train.json"), read("arc_easy_validation.json")


def tenancy() -> tuple[Rows, Rows]:
    rows = _csv(EVAL_DATA / "public_sector/mietrecht_sentences_9_classes.csv", ";", "utf-8-sig")
    return [{"Funktion": r["Funktion"], "Text": r["Text"]} for r in rows
            if r["Funktion"] in FUNCTIONS], []


def pubmedqa() -> tuple[Rows, Rows]:
    items = json.loads((EVAL_DATA / "health/pubmedqa_ori_pqal.json").read_text())
    test = json.loads((EVAL_DATA / "health/pubmedqa_test_ground_truth.json").read_text())
    return [{"pubid": int(pmid), "question": item["QUESTION"],
             "context": {"contexts": item["CONTEXTS"], "labels": item["LABELS"],
                         "meshes": item["MESHES"]},
             "long_answer": item["LONG_ANSWER"], "final_decision": item["final_decision"]}
            for pmid, item in items.items() if pmid not in test], []


SETS: dict[str, Callable[[], tuple[Rows, Rows]]] = {
    "market-news-sentiment": tweets,
    "comment-moderation-de": germeval,
    "ipcc-confidence-rating": climatex,
    "science-curriculum-quiz": arc_easy,
    "tenancy-law-sentence-function-de": tenancy,
    "clinical-evidence-qa": pubmedqa,
}
"""Recipe -> (training rows, validation rows or [] to hold some training rows out)."""


def split(recipe: str, train_rows: int, eval_rows: int, seed: int = 0) -> tuple[Rows, Rows]:
    """Seeded, disjoint samples: evaluation rows from the validation split where the set has
    one, else held out of the training split; a row repeated in the set (the tenancy corpus
    has some) is kept once, so no evaluation row is also a training row."""
    train, validation = (list({json.dumps(r, sort_keys=True): r for r in rows}.values())
                         for rows in SETS[recipe]())
    rng = random.Random(seed)
    rng.shuffle(train)
    if not validation:
        validation, train = train[:eval_rows], train[eval_rows:]
    rng.shuffle(validation)
    held_out = validation[:eval_rows]
    seen = {json.dumps(r, sort_keys=True) for r in held_out}
    return [r for r in train if json.dumps(r, sort_keys=True) not in seen][:train_rows], held_out


def _write(path: Path, rows: Rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def run_one(settings: Settings, tenant: str, key: SigningKey, recipe: str,
            args: argparse.Namespace, metric: str | None) -> dict[str, Any]:
    train, held_out = split(recipe, args.train_rows, args.eval_rows)
    folder = settings.data_root / tenant / recipe
    request = request_finetune(
        settings.kafka, topics=settings.topics, signing_key=key, tenant=tenant,
        source="urn:aif-tuning:benchmarks.real_data", recipe=recipe,
        train_file=str(_write(folder / "train.jsonl", train)),
        eval_file=str(_write(folder / "eval.jsonl", held_out)),
        overrides=HyperparameterOverrides(
            max_steps=args.max_steps, epochs=args.epochs, eval_limit=args.eval_limit,
            early_stopping_metric=metric))
    job_id = job_id_for(tenant, request.source, request.id)
    started = time.monotonic()
    watch = wait_for_job(settings.kafka, settings.topics, tenant, job_id,
                         timeout_s=args.timeout_s)
    with session_factory(settings.db_url)() as s:
        job = s.get(Job, job_id)
        assert job is not None
        scores = {sc.task: sc for sc in s.scalars(select(Score).where(Score.job_id == job_id))}
        own = next((sc for task, sc in scores.items() if task.endswith("_own")), None)
        trained_file = Path(job.work_dir or "") / TRAINING_RESULT
        trained = TrainingResult.read(trained_file) if trained_file.is_file() else None
        result: dict[str, Any] = {
            "recipe": recipe, "job_id": job_id, "state": str(watch.final),
            "reason": job.reason, "train_rows": len(train), "eval_rows": len(held_out),
            "wall_s": round(time.monotonic() - started, 1),
            "training_s": trained and round(trained.wall_s, 1),
            "max_steps": (job.recipe or {}).get("train", {}).get("max_steps"),
            "picked": (job.preflight or {}).get("picked"),
            "early_stopping_metric": (job.recipe or {}).get("train", {}).get(
                "early_stopping_metric"),
            "steps": trained and trained.steps, "best_step": trained and trained.best_step,
            "stopped_early": trained and trained.stopped_early,
            "precision": trained and trained.precision,
            "validation_loss": trained and trained.validation_loss,
            "validation_accuracy": trained and trained.validation_accuracy,
            **_selection(Path(job.work_dir or ""), (job.recipe or {}).get("train", {})),
            "tokens_per_s": trained and trained.tokens_per_s,
            "train_tokens": trained and trained.train_tokens,
            "gate_passed": job.gate_passed, "gate_reason": job.gate_reason,
        }
    if own is not None:
        result |= {"task": own.task, "documents": own.samples, "majority": own.majority,
                   "chance": own.chance, "base": own.base, "tuned": own.tuned,
                   "base_macro_f1": own.base_macro_f1, "tuned_macro_f1": own.tuned_macro_f1,
                   "tuned_recall": own.tuned_recall, "vs_majority": own.vs_majority,
                   "vs_base": own.vs_base,
                   "beats_majority_0.05": own.majority is not None
                   and own.tuned >= own.majority + 0.05,
                   "beats_base_0.10": own.tuned >= own.base + 0.10}
    return result


def _selection(work_dir: Path, train: dict[str, Any]) -> dict[str, Any]:
    """The run's validation figures, and the step each metric keeps on them, with the step
    it would stop at (None: past the run's end). The two metrics see the same training
    (same seed, same order), so where both stop within the run, this is the other
    metric's choice without training again."""
    progress = work_dir / PROGRESS_LOG
    lines = [ProgressLine.model_validate_json(raw) for raw in
             (progress.read_text().splitlines() if progress.is_file() else [])]
    curve = [(p.step, Validation(p.loss, p.accuracy)) for p in lines
             if p.stage == "validation" and p.loss is not None]
    if not curve or train.get("early_stopping_patience") is None:
        return {"validation": []}
    metrics = ["loss"] + ["accuracy"] * all(v.accuracy is not None for _, v in curve)
    return {"validation": [{"step": s, "loss": v.loss, "accuracy": v.accuracy}
                           for s, v in curve],
            "kept_by": {m: kept(curve, m, train["early_stopping_patience"],  # type: ignore[arg-type]
                                train["early_stopping_min_delta"]) for m in metrics}}


def table(results: list[dict[str, Any]]) -> str:
    """docs/real-data.md's table: one row per run, in the order of `SETS`, each with the
    gate's paired comparisons and the step each selection metric keeps on its figures."""
    rows = ["| recipe | selected on | majority | base | tuned | lead over majority [95%], p "
            "| lead over base [95%], p | gate | steps run | kept (loss / accuracy would "
            "keep) | training (wall; cores and load: see the run) |", "|---" * 11 + "|"]
    for r in sorted(results, key=lambda r: (list(SETS).index(r["recipe"]),
                                            r["early_stopping_metric"] or "")):
        # "+": the metric would not have stopped yet where this run stopped
        would = " / ".join(f"{step}+" if stop is None and r["stopped_early"] else str(step)
                           for step, stop in r.get("kept_by", {}).values())
        verdict = "passed" if r["gate_passed"] else "rejected: " + (
            r["gate_reason"] or "").rpartition("Failed: ")[2].rstrip(".")
        rows.append(
            f"| `{r['recipe']}` | {r['early_stopping_metric']} | {r['majority']:.3f} | "
            f"{r['base']:.3f} | {r['tuned']:.3f} | {_lead(r['vs_majority'])} | "
            f"{_lead(r['vs_base'])} | {verdict} | {r['steps']} | {r['best_step']} ({would}) "
            f"| {r['training_s']:.0f} s |")
    return "\n".join(rows)


def _lead(paired: dict[str, Any] | None) -> str:
    if paired is None:
        return "n/a"
    return (f"{paired['diff']:+.3f} [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}], "
            f"p {paired['p_value']:.2g}")


def _epochs(text: str) -> float | str:
    """`--epochs`: "auto" or a number (the request's field is typed; a string "1" is refused)."""
    return text if text == "auto" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", choices=sorted(SETS))
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--eval-rows", type=int, default=150)
    parser.add_argument("--max-steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--epochs", type=_epochs, default=None,
                        help="a number or auto; default: the recipe's")
    parser.add_argument("--early-stopping-metric", choices=["loss", "accuracy"],
                        action="append", help="what picks the kept step (repeat to run "
                        "each recipe with each, in that order); default: the recipe's")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="documents per task (a smoke run); default: all")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--home", type=Path, default=None,
                        help="AIF_HOME to keep (its converted base model is reused); default: "
                             "a new temporary one")
    parser.add_argument("--table", nargs="+", type=Path, metavar="RESULT",
                        help="print docs/real-data.md's table of these result files, run "
                             "nothing")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(path.read_text()) for path in args.table]))
        return
    home = args.home or Path(tempfile.mkdtemp(prefix="aif-real-data-"))
    tenant = f"bench-{time.strftime('%Y%m%d%H%M%S')}"  # a fresh tenant in a kept home
    settings = Settings(home=home, topic_prefix="bench", kafka=KafkaConfig(  # type: ignore[call-arg]
        bootstrap_servers=os.environ.get("AIF_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19392")))
    args.out.mkdir(parents=True, exist_ok=True)
    with Service(settings, web=False):
        with session_factory(settings.db_url)() as s:
            created = create_tenant(s, tenant)
            s.commit()
        key = SigningKey(created.signing_key_id, created.signing_secret)
        for metric in args.early_stopping_metric or [None]:  # one tenant: base scores kept
            for recipe in args.recipe or sorted(SETS):
                result = run_one(settings, tenant, key, recipe, args, metric)
                stamp = time.strftime("%Y%m%dT%H%M%S")
                mode = f"-{metric}" if metric else ""
                (args.out / f"real_data-{recipe}{mode}-{stamp}.json").write_text(
                    json.dumps(result, indent=2) + "\n")
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
