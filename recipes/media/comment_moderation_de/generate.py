"""Generate the synthetic reader comments (German) for the comment-moderation-de recipe.

    python -m recipes.media.comment_moderation_de.generate

Rows have the columns of the GermEval 2018 hub data set (`text`, `coarse`, `fine`, both labels
ints), so the recipe's templates read this file and the hub split alike. The moderation rules
are one fictional news outlet's: harsh words about a policy or a decision stay online (OTHER);
the same words aimed at a person, or contempt for a whole group, are removed (OFFENSE).
Persons, policies and disparaging words occur under both labels, so no keyword decides.
"""

from __future__ import annotations

from pathlib import Path

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261201


PERSONS = ["der Bürgermeister", "die Ministerin", "der Landrat", "die Stadträtin Weber",
           "der Kanzler", "die Autorin dieses Artikels", "der Fraktionschef",
           "die Bildungssenatorin", "der Verkehrsminister", "Herr Albrecht vom Stadtrat"]
POLICIES = ["die Mietpreisbremse", "die Heizungsreform", "die Grundsteuerreform",
            "die Rentenreform", "die neue Parkgebührenordnung", "die Schulreform",
            "die Cannabis-Freigabe", "die Erhöhung der Kita-Gebühren", "die Radwegeplanung",
            "die Bürgergeld-Erhöhung"]
GROUPS = ["alle Politiker", "die Journalisten", "die Beamten im Rathaus",
          "die Wähler dieser Partei", "die Lobbyisten", "die Leute von der Redaktion",
          "die Funktionäre", "die Stadträte"]
# Said of a policy this is criticism (OTHER), said of a person an insult (OFFENSE).
VERDICTS = ["ein schlechter Witz", "eine Katastrophe", "eine Lachnummer", "eine Zumutung",
            "ein Totalausfall", "peinlich", "eine Frechheit", "das Letzte"]
NAMES = ["Vollpfosten", "Schwachkopf", "Versager", "Clown", "Hohlkopf", "Nichtsnutz",
         "Dummschwätzer"]
CONTEMPT = ["Schmarotzer", "Parasiten", "Abschaum", "Gesindel", "Nichtsnutze", "Idioten"]
OPENERS = ["", "@Redaktion ", "Ehrlich: ", "Zum Artikel: ", "Mal ehrlich, ", "Kommentar: "]

# Moderation outcome -> comment templates; two kinds of comment per outcome, so that the
# classes stay balanced while the label columns keep GermEval's fine-grained classes.
TEMPLATES: dict[str, list[str]] = {
    "criticism": [
        "{policy} ist {verdict}, das muss man so deutlich sagen.",
        "{person} hat {policy} durchgedrückt, und das Ergebnis ist {verdict}.",
        "{policy} ist und bleibt {verdict}, {person} sollte sie zurücknehmen.",
        "{group} haben {policy} beschlossen, und das Ergebnis ist {verdict}.",
        "{policy} ist {verdict} und kostet uns Steuerzahler Millionen.",
    ],
    "opinion": [
        "{person} hat {policy} im Interview gut erklärt, auch wenn ich anderer Meinung bin.",
        "wer {person} hier als „{name}“ bezeichnet, sollte lieber Argumente bringen.",
        "{person} sollte zurücktreten, weil {policy} gescheitert ist.",
        "ich habe {person} gewählt, aber {policy} überzeugt mich nicht.",
        "{group} und {person} streiten über {policy}, gut so.",
    ],
    "insult": [
        "{person} ist {verdict}, das muss man so deutlich sagen.",
        "{person} hat {policy} durchgedrückt, was für ein {name}.",
        "{person} ist und bleibt {verdict}, {policy} beweist es.",
        "{person} ist ein {name} und hat von nichts eine Ahnung.",
        "{person} soll sich schämen, dieser {name}.",
    ],
    "abuse": [
        "{group} sind doch alle {contempt}.",
        "{policy} zeigt wieder: {group} sind {contempt}.",
        "typisch, {group} sind nur {contempt}, die {policy} bejubeln.",
        "{group} gehören alle abgesetzt, das sind {contempt}.",
        "egal ob {policy} oder sonst was, {group} bleiben {contempt}.",
    ],
}
# GermEval 2018: coarse 0 OTHER, 1 OFFENSE; fine 0 OTHER, 1 ABUSE, 2 INSULT, 3 PROFANITY.
LABELS: dict[str, dict[str, int]] = {
    "criticism": {"coarse": 0, "fine": 0},
    "opinion": {"coarse": 0, "fine": 0},
    "insult": {"coarse": 1, "fine": 2},
    "abuse": {"coarse": 1, "fine": 1},
}


def germeval_row(row: dict[str, str]) -> dict[str, object]:
    return {"text": row["text"], **LABELS[row["label"]]}


SLOTS = {"person": PERSONS, "policy": POLICIES, "group": GROUPS, "verdict": VERDICTS,
         "name": NAMES, "contempt": CONTEMPT}
GENERATOR = TicketGenerator(TEMPLATES, SLOTS, OPENERS, SEED, to_row=germeval_row)
generate = GENERATOR.generate  # (out_dir, n_train=800, n_test=200)

if __name__ == "__main__":
    generate(HERE / "data")
