"""Generate the synthetic citizen requests (German) for the citizen-request-routing-de recipe.

    python -m recipes.public_sector.citizen_request_routing_de.generate

Which office handles what follows one fictional town's rules; several requests share words
with other offices ("Straße", "Antrag", "Wohnung") so that keyword matching is not enough.
"""

from __future__ import annotations

from pathlib import Path

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261127

PLACES = ["in der Hauptstraße", "am Marktplatz", "im Lindenweg 4", "vor der Grundschule",
          "an der Bushaltestelle Rathaus", "im Gewerbegebiet Nord", "in der Bahnhofstraße",
          "am Stadtpark", "in der Gartenstraße 12", "hinter dem Rathaus"]
TIMES = ["seit gestern", "seit einer Woche", "heute Morgen", "seit Tagen", "jeden Abend",
         "seit letztem Monat", "schon wieder", "seit dem Sturm"]
OPENERS = ["", "Guten Tag, ", "Hallo, ", "Anfrage über das Bürgerportal: ", "Telefonnotiz: ",
           "Sehr geehrte Damen und Herren, "]

TEMPLATES: dict[str, list[str]] = {
    "buergeramt": [
        "mein Personalausweis ist abgelaufen, ich wohne {place} und brauche einen Termin.",
        "ich bin umgezogen und wohne jetzt {place}; ich möchte mich ummelden.",
        "ich brauche eine Meldebescheinigung für meine Wohnung {place}.",
        "mein Reisepass ist {time} verschwunden, was muss ich tun?",
        "wir ziehen in die Wohnung {place} und müssen uns anmelden.",
    ],
    "ordnungsamt": [
        "ein Auto parkt {time} {place} auf dem Gehweg.",
        "die Nachbarn {place} machen {time} laute Musik nach 22 Uhr.",
        "ein Fahrzeug ohne Kennzeichen steht {time} {place} an der Straße.",
        "jemand hat {place} Sperrmüll illegal abgeladen.",
        "ein Lieferwagen blockiert {time} die Feuerwehrzufahrt {place}.",
    ],
    "bauamt": [
        "ich möchte mein Haus {place} um einen Wintergarten erweitern; brauche ich einen Antrag?",
        "der Nachbar {place} baut {time} eine Garage ohne Genehmigung.",
        "wie hoch darf ein Zaun an meinem Grundstück {place} an der Straße sein?",
        "ich habe {time} einen Bauantrag für das Grundstück {place} gestellt.",
        "darf ich auf dem Dach meiner Wohnung {place} eine Gaube einbauen?",
    ],
    "sozialamt": [
        "ich habe meine Arbeit verloren und brauche {time} Unterstützung für die Miete.",
        "wie stelle ich einen Antrag auf Wohngeld für meine Wohnung {place}?",
        "meine Mutter lebt {place} und kann die Pflegekosten nicht mehr bezahlen.",
        "ich beziehe eine kleine Rente und brauche {time} Hilfe bei den Heizkosten.",
        "ich möchte einen Antrag auf Grundsicherung stellen, ich wohne {place}.",
    ],
    "tiefbauamt": [
        "ein tiefes Schlagloch ist {time} {place} in der Fahrbahn.",
        "die Straßenlaterne {place} ist {time} kaputt.",
        "der Gehweg {place} hat sich {time} abgesenkt, man stolpert leicht.",
        "ein Gully {place} ist verstopft und die Straße steht unter Wasser.",
        "die Fahrbahnmarkierung {place} ist {time} kaum noch zu sehen.",
    ],
}

GENERATOR = TicketGenerator(TEMPLATES, {"place": PLACES, "time": TIMES}, OPENERS, SEED)
generate = GENERATOR.generate  # (out_dir, n_train=800, n_test=200)

if __name__ == "__main__":
    generate(HERE / "data")
