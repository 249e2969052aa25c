"""A local BM25 retriever over a JSONL corpus (``{"id", "contents"}``, the title on the first line).

    python examples/search-r1/retriever.py --corpus data/search-r1/corpus.jsonl "founder of Zulan Works"

Okapi BM25: score(q, d) = Σ_{t∈q} idf(t) · f(t,d)(k1+1) / (f(t,d) + k1(1 − b + b|d|/avgdl)), with
idf(t) = ln(1 + (N − n_t + 0.5)/(n_t + 0.5)); lower-cased word tokens, no stemming. It stands in for
Search-R1's retrieval server (slime's example posts to one at ``/retrieve``): in process, no index
files, fast enough for a corpus of thousands of documents.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
from collections import Counter
from pathlib import Path


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class BM25:
    def __init__(self, documents: list[dict], k1: float = 1.5, b: float = 0.75) -> None:
        if not documents:
            raise ValueError("BM25: the corpus is empty")
        self.documents, self.k1, self.b = documents, k1, b
        self.counts = [Counter(words(doc["contents"])) for doc in documents]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.avg_length = sum(self.lengths) / len(documents)
        frequency = Counter(t for c in self.counts for t in c)
        n = len(documents)
        self.idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in frequency.items()}

    def score(self, query_words: list[str], i: int) -> float:
        counts, norm = self.counts[i], self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg_length)
        return sum(self.idf.get(t, 0.0) * counts[t] * (self.k1 + 1) / (counts[t] + norm) for t in query_words)

    def search(self, query: str, topk: int = 3) -> list[dict]:
        """The `topk` best documents for `query`, best first (ties: corpus order); none if no word matches."""
        query_words = words(query)
        scored = [(self.score(query_words, i), i) for i in range(len(self.documents))]
        ranked = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
        return [self.documents[i] for _, i in ranked[:topk]]


@functools.lru_cache(maxsize=4)
def load_retriever(corpus: str) -> BM25:
    path = Path(corpus)
    if not path.is_file():
        raise FileNotFoundError(
            f"search-r1 corpus {path} not found: write it with examples/search-r1/make_search_data.py, or point "
            "SEARCH_R1_CORPUS at a JSONL file of {\"id\", \"contents\"} documents"
        )
    return BM25([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def passages_text(documents: list[dict]) -> str:
    """Search-R1's rendering of results: ``Doc i(Title: title) text`` a line."""
    lines = []
    for i, doc in enumerate(documents, 1):
        title, _, text = doc["contents"].partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}")
    return "\n".join(lines) if lines else "No results."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data/search-r1/corpus.jsonl")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("query")
    args = parser.parse_args(argv)
    print(passages_text(load_retriever(args.corpus).search(args.query, args.topk)))


if __name__ == "__main__":
    main()
