"""Generate the synthetic ticket data for the grid-ticket-routing recipe.

    python -m recipes.energy.grid_ticket_routing.generate

Deterministic (fixed seed), so the committed files can be checked against a fresh run. The
routing rules are this fictional operator's own: which team handles what cannot be guessed
from general knowledge alone, which is what makes the task worth a fine-tune.
"""

from __future__ import annotations

from pathlib import Path

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261126

PLACES = ["Elm Street", "the harbour district", "Nordweg 12", "the school on Hill Road",
          "Riverside flats", "the industrial park", "Mill Lane", "the old town square",
          "Station Road", "the wind farm access road", "Oak Avenue", "the hospital car park"]
OPENERS = ["", "Hello, ", "Customer report: ", "Via the app: ", "Phone note: ", "Hi team, "]
TIMES = ["since this morning", "for two hours", "since last night", "every evening",
         "since about 6 pm", "on and off all week", "since the storm", "for ten minutes"]

# Team -> ticket templates. Several templates share surface words with other teams on
# purpose ("meter", "line", "bill") so that keyword matching alone is not enough.
TEMPLATES: dict[str, list[str]] = {
    "dispatch": [
        "No power at {place} {time}, the whole street is dark.",
        "Our building at {place} lost electricity {time}.",
        "Lights went out at {place} {time} and neighbours have no power either.",
        "Complete blackout at {place} {time}, the meter display is blank too.",
        "Power cut at {place} {time}; we need a crew to restore supply.",
    ],
    "accounts": [
        "My bill for {place} is twice as high as usual, please check it.",
        "I was charged twice this month for the account at {place}.",
        "Please change the bank details used for my direct debit at {place}.",
        "The invoice for {place} shows a reading that I never submitted.",
        "I moved out of {place} but I am still being billed.",
    ],
    "metering": [
        "The smart meter at {place} stopped sending readings {time}.",
        "Meter display at {place} shows an error code {time}.",
        "Please replace the old meter at {place}, it is hard to read.",
        "The meter at {place} is making a clicking noise {time}.",
        "Our meter cabinet door at {place} is broken and will not close.",
    ],
    "forestry": [
        "Tree branches are touching the overhead line at {place}.",
        "A hedge at {place} has grown into the power line {time}.",
        "Please trim the trees near the cables at {place} before they cause a fault.",
        "Ivy is climbing the pole at {place} up to the line.",
        "A fallen tree is leaning on the line at {place} but power is still on.",
    ],
    "emergency": [
        "A power line is down on the road at {place} and sparking!",
        "Smoke is coming from the substation at {place} {time}.",
        "Children are playing near an open transformer box at {place}.",
        "There is a burning smell and sparks from the cable at {place}.",
        "A car hit the pole at {place} and wires are hanging low.",
    ],
}

GENERATOR = TicketGenerator(TEMPLATES, {"place": PLACES, "time": TIMES}, OPENERS, SEED)
generate = GENERATOR.generate  # (out_dir, n_train=800, n_test=200)

if __name__ == "__main__":
    generate(HERE / "data")
