"""Generate the synthetic market-news tweets for the market-news-sentiment recipe.

    python -m recipes.finance.market_news_sentiment.generate

Deterministic (fixed seed), so the committed files can be checked against a fresh run. Rows
have the columns of the hub data set (`text`, `label` as an int: 0 bearish, 1 bullish,
2 neutral). The labels follow one fictional desk's rule: the news event about the company
(rating, guidance, results, dividend, buyback) decides, never the share-price move that the
tweet also reports. Every label shares "guidance", "price target", "dividend", "EPS" and the
price moves, so neither keywords nor the move alone give the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261128

LABELS = ["bearish", "bullish", "neutral"]  # the hub data set's label ids 0, 1, 2

TICKERS = ["$AAPL", "$NKE", "$BA", "$PFE", "$TSLA", "$KO", "$JPM", "$INTC", "$SAP", "$DIS",
           "$XOM", "$AMZN", "$SBUX", "$ASML"]
BROKERS = ["Morgan Stanley", "Jefferies", "UBS", "Barclays", "Goldman Sachs", "BofA",
           "Deutsche Bank", "Citi"]
MOVES = ["shares up 4%", "shares down 3%", "stock flat premarket", "shares fall 6% after hours",
         "shares rise 2% after hours", "stock slides 5%", "stock jumps 7%", "shares unchanged"]
QUARTERS = ["Q1", "Q2", "Q3", "Q4"]
PRICES = ["45", "120", "210", "88", "310", "64"]
OPENERS = ["", "BREAKING: ", "Update: ", "Desk note: ", "Wire: "]

TEMPLATES: dict[str, list[str]] = {
    "bearish": [
        "{ticker} - {broker} downgrades to Underweight; {move}",
        "{ticker} cuts full-year guidance, {move}",
        "{ticker} misses {quarter} EPS estimates; {move}",
        "{ticker} - {broker} lowers price target to ${price}; {move}",
        "{ticker} suspends its dividend; {move}",
        "{ticker} withdraws its {quarter} revenue outlook; {move}",
    ],
    "bullish": [
        "{ticker} - {broker} upgrades to Overweight; {move}",
        "{ticker} raises full-year guidance, {move}",
        "{ticker} beats {quarter} EPS estimates; {move}",
        "{ticker} - {broker} raises price target to ${price}; {move}",
        "{ticker} raises its dividend by 10%; {move}",
        "{ticker} announces a new share buyback; {move}",
    ],
    "neutral": [
        "{ticker} - {broker} reiterates Equal Weight; {move}",
        "{ticker} reaffirms full-year guidance, {move}",
        "{ticker} {quarter} EPS in line with estimates; {move}",
        "{ticker} - {broker} keeps price target at ${price}; {move}",
        "{ticker} declares its regular quarterly dividend; {move}",
        "{ticker} to report {quarter} results next week; {move}",
    ],
}


def hub_row(row: dict[str, str]) -> dict[str, Any]:
    """The hub data set's int label id in place of the label word."""
    return {**row, "label": LABELS.index(row["label"])}


SLOTS = {"ticker": TICKERS, "broker": BROKERS, "move": MOVES, "quarter": QUARTERS,
         "price": PRICES}
GENERATOR = TicketGenerator(TEMPLATES, SLOTS, OPENERS, SEED, to_row=hub_row)
generate = GENERATOR.generate  # (out_dir, n_train=800, n_test=200)

if __name__ == "__main__":
    generate(HERE / "data")
