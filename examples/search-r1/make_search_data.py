"""Write the search-r1 example's corpus and questions: a made-up world, so that only search can answer.

    python examples/search-r1/make_search_data.py --out-dir data/search-r1

Writes three JSONL files (seeded: the same seed writes the same files):

- ``corpus.jsonl``: ``{"id", "contents"}`` documents, the title on the first line of ``contents``
  (Search-R1's wiki-corpus layout), one per country, company, person and city of the world;
- ``train.jsonl`` / ``test.jsonl``: ``{"question", "messages", "label", "metadata": {"hops"}}``; the
  messages hold Search-R1's instruction (think, ``<search>``, ``<answer>``) and the question. One-hop
  questions ("Who founded X?") need one document; two-hop ones ("In which city was the founder of X
  born?") need two searches.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from temper.data.writers import write_jsonl

INSTRUCTION = (
    "Answer the question. Reason inside <think> and </think> whenever you get new information. If you lack "
    "a fact, call the search engine with <search> query </search>; it returns the top results between "
    "<information> and </information>. You may search as many times as you need. When you know the "
    "answer, give it inside <answer> and </answer> without explanation, for example <answer> Brentmoor "
    "</answer>. Question: "
)
ONSETS = ["b", "br", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "n", "r", "l", "s", "th", "m"]
FIELDS = ["glassmaking", "clockwork", "shipbuilding", "weaving", "printing", "lens grinding"]


class World:
    """Countries with capitals, companies with founders and headquarters, people with birthplaces."""

    def __init__(self, seed: int, countries: int = 8, companies: int = 16) -> None:
        self.rng = random.Random(seed)
        self.used: set[str] = set()
        self.capital = {self.name(3): self.name(2) for _ in range(countries)}
        self.cities = list(self.capital.values()) + [self.name(2) for _ in range(countries)]
        self.country_of = {city: self.rng.choice(list(self.capital)) for city in self.cities}
        self.country_of.update({city: country for country, city in self.capital.items()})
        self.birthplace: dict[str, str] = {}
        self.founder: dict[str, str] = {}
        self.headquarters: dict[str, str] = {}
        for _ in range(companies):
            company = self.name(2) + " " + self.rng.choice(["Works", "Guild", "Company", "Foundry"])
            person = self.name(2) + " " + self.name(3)
            self.founder[company], self.birthplace[person] = person, self.rng.choice(self.cities)
            self.headquarters[company] = self.rng.choice(self.cities)

    def name(self, syllables: int) -> str:
        while True:
            word = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                           for _ in range(syllables))  # fmt: skip
            if word not in self.used:
                self.used.add(word)
                return word.capitalize()

    def documents(self) -> list[dict]:
        docs = []
        for country, capital in self.capital.items():
            docs.append(f"{country}\n{country} is a country whose capital is {capital}.")
        for company, person in self.founder.items():
            field = self.rng.choice(FIELDS)
            docs.append(f"{company}\n{company} is a {field} firm founded by {person}. "
                        f"Its headquarters are in {self.headquarters[company]}.")  # fmt: skip
        for person, city in self.birthplace.items():
            docs.append(f"{person}\n{person} is an inventor who was born in {city}.")
        for city, country in self.country_of.items():
            docs.append(f"{city}\n{city} is a city in {country}.")
        return [{"id": str(i), "contents": text} for i, text in enumerate(docs)]

    def questions(self) -> list[tuple[str, str, int]]:
        """(question, answer, hops) for every fact and two-hop chain."""
        out = [(f"What is the capital of {country}?", city, 1) for country, city in self.capital.items()]
        for company, person in self.founder.items():
            out += [(f"Who founded {company}?", person, 1),
                    (f"In which city is {company} headquartered?", self.headquarters[company], 1),
                    (f"In which city was {person} born?", self.birthplace[person], 1),
                    (f"In which city was the founder of {company} born?", self.birthplace[person], 2)]  # fmt: skip
        return out


def qa_row(question: str, answer: str, hops: int) -> dict:
    return {
        "question": question,
        "messages": [{"role": "user", "content": INSTRUCTION + question}],
        "label": answer,
        "metadata": {"hops": hops},
    }


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("data/search-r1"))
    parser.add_argument("--test-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = World(args.seed)
    rows = [qa_row(*q) for q in world.questions()]
    random.Random(args.seed).shuffle(rows)
    paths = {
        "corpus": write_jsonl(args.out_dir / "corpus.jsonl", world.documents()),
        "train": write_jsonl(args.out_dir / "train.jsonl", rows[args.test_size:]),
        "test": write_jsonl(args.out_dir / "test.jsonl", rows[: args.test_size]),
    }
    print(f"wrote {len(world.documents())} documents and {len(rows)} questions under {args.out_dir}")
    return paths


if __name__ == "__main__":
    main()
