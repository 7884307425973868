"""Generate synthetic statute sentences (German tenancy law) for tenancy-law-sentence-function-de.

    python -m recipes.public_sector.tenancy_law_sentence_function_de.generate

Rows have the columns of the sebis corpus of BGB tenancy-law sentences (`Funktion`, `Text`),
labelled with four of its functions: Permission (a party may), Duty (a party must),
Consequence (a legal effect that follows by itself) and Objection (an agreement or claim that
does not hold). Parties, events and conditions are shared by all functions, and a party's
rights also occur in Consequences and Objections ("so erlischt das Recht des Mieters, die
Miete zu mindern"), so the function follows from the sentence's structure, not one keyword.
"""

from __future__ import annotations

from pathlib import Path

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261202

PARTIES = ["Mieter", "Vermieter", "Untermieter", "Erwerber"]
# What the law lets a party do, and what it makes a party do: infinitive phrases with
# inseparable verbs, so the zu-infinitive is "... zu <verb>". "Ersatz", "Miete", "Kaution" and
# "Mietsache" occur on both sides.
RIGHTS = ["das Mietverhältnis fristlos kündigen", "die Miete angemessen mindern",
          "Ersatz der Aufwendungen verlangen", "der Mieterhöhung widersprechen",
          "die Fortsetzung des Mietverhältnisses verlangen",
          "die Rückzahlung der Kaution verlangen", "Auskunft über die Betriebskosten verlangen",
          "die Zustimmung verweigern"]
DUTIES = ["die vereinbarte Miete entrichten", "die Mietsache in gutem Zustand erhalten",
          "die Kaution getrennt von seinem Vermögen verwahren", "Ersatz des Schadens leisten",
          "die Schönheitsreparaturen übernehmen", "die Mietsache bei Vertragsende räumen",
          "die Lasten der Mietsache tragen", "die Betriebskosten jährlich belegen"]


def _zu(phrases: list[str]) -> list[str]:
    return [" zu ".join(phrase.rsplit(" ", 1)) for phrase in phrases]


EVENTS = ["Kommt der Mieter mit zwei Monatsmieten in Verzug", "Zeigt sich während der "
          "Mietzeit ein Mangel", "Wird die Wohnung modernisiert", "Endet das Mietverhältnis",
          "Stirbt der Mieter", "Veräußert der Vermieter das Grundstück",
          "Ist die vereinbarte Mietzeit abgelaufen", "Stört eine Vertragspartei den Hausfrieden"]
CONDITIONS = ["wenn die Mietsache einen erheblichen Mangel hat",
              "wenn die Miete zwei Monate im Rückstand ist",
              "sofern der Vertrag auf unbestimmte Zeit geschlossen ist",
              "soweit nichts anderes vereinbart ist", "wenn die Betriebskosten gestiegen sind",
              "solange die Mietsache nicht zurückgegeben ist",
              "wenn der Vermieter den Mangel arglistig verschwiegen hat",
              "nachdem eine angemessene Frist erfolglos abgelaufen ist"]
PERIODS = ["sechs Monaten", "drei Jahren", "zwei Jahren", "einem Jahr"]
SECTIONS = ["536", "543", "551", "555b", "558", "566", "569", "573"]
OPENERS = ["", "(1) ", "(2) ", "(3) "]

TEMPLATES: dict[str, list[str]] = {
    "Permission": [
        "Der {party} kann {right}, {condition}.",
        "{event}, so ist der {party} berechtigt, {right_zu}.",
        "Der {party} darf {right}, {condition}.",
        "Unter den Voraussetzungen des § {section} kann der {party} {right}.",
    ],
    "Duty": [
        "Der {party} hat {duty_zu}, {condition}.",
        "{event}, so ist der {party} verpflichtet, {duty_zu}.",
        "Der {party} muss {duty}, {condition}.",
        "Unter den Voraussetzungen des § {section} hat der {party} {duty_zu}.",
    ],
    "Consequence": [
        "{event}, so verlängert sich das Mietverhältnis auf unbestimmte Zeit.",
        "{event}, so erlischt das Recht des {party}s, {right_zu}.",
        "Die Ansprüche des {party}s nach § {section} verjähren in {period}.",
        "{event}, so tritt der Erwerber in die Rechte und Pflichten des {party}s ein.",
        "Das Mietverhältnis endet mit Ablauf der Frist, {condition}.",
    ],
    "Objection": [
        "Eine zum Nachteil des {party}s von § {section} abweichende Vereinbarung ist unwirksam.",
        "Eine Vereinbarung, die das Recht des {party}s ausschließt, {right_zu}, ist unwirksam.",
        "Die Kündigung durch den {party} ist ausgeschlossen, {condition}.",
        "{event}, so ist eine Mieterhöhung nach § {section} unzulässig.",
    ],
}


def sebis_row(row: dict[str, str]) -> dict[str, object]:
    """The corpus's columns, in its order: `Funktion;Text`."""
    return {"Funktion": row["label"], "Text": row["text"]}


SLOTS = {"party": PARTIES, "right": RIGHTS, "right_zu": _zu(RIGHTS), "duty": DUTIES,
         "duty_zu": _zu(DUTIES), "event": EVENTS, "condition": CONDITIONS, "period": PERIODS,
         "section": SECTIONS}
GENERATOR = TicketGenerator(TEMPLATES, SLOTS, OPENERS, SEED, to_row=sebis_row)
generate = GENERATOR.generate  # (out_dir, n_train=800, n_test=200)

if __name__ == "__main__":
    generate(HERE / "data")
