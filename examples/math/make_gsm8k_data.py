"""Write a small GSM8K-format data set of generated grade-school word problems (no download).

    python examples/math/make_gsm8k_data.py --out-dir data/gsm8k --train-size 256 --test-size 32

Each JSONL row has GSM8K's own fields and the ones slime's math recipe reads:

- ``question``: the word problem; ``answer``: GSM8K-style worked solution, one step a line with
  ``<<a*b=c>>`` calculator annotations, ending in ``#### <number>``;
- ``messages``: the question as one user turn asking for the final answer in ``\\boxed{}``
  (``--input-key messages --apply-chat-template``);
- ``label``: the number after ``####`` (``--label-key label``, graded by ``--rm-type math``).

Problems come from a few templates (sums, differences, products, sharing, two-step purchases) with
seeded random names, items and numbers, so the same seed writes the same files.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from temper.data.writers import write_train_test

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark", "Ali", "Sara"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards"]

Problem = tuple[str, list[str], int]  # question, solution steps, answer


def bought_more(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(3, 60), rng.randint(2, 40)
    question = f"{name} has {a} {item}. {name} buys {b} more {item}. How many {item} does {name} have now?"
    return question, [f"{name} has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} {item} now."], a + b


def twice_as_many(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(4, 50)
    question = (
        f"{name} sold {a} {item} in April, and then twice as many {item} in May. "
        f"How many {item} did {name} sell altogether in April and May?"
    )
    steps = [f"{name} sold {a}*2=<<{a}*2={2 * a}>>{2 * a} {item} in May.",
             f"{name} sold {a}+{2 * a}=<<{a}+{2 * a}={3 * a}>>{3 * a} {item} altogether in April and May."]  # fmt: skip
    return question, steps, 3 * a


def boxes(rng: random.Random) -> Problem:
    item = rng.choice(ITEMS)
    per_box, count = rng.randint(2, 12), rng.randint(2, 15)
    total = per_box * count
    question = f"A box holds {per_box} {item}. How many {item} are in {count} boxes?"
    step = f"There are {per_box}*{count}=<<{per_box}*{count}={total}>>{total} {item} in {count} boxes."
    return question, [step], total


def money_left(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    spent_a, spent_b = rng.randint(2, 30), rng.randint(2, 30)
    start = spent_a + spent_b + rng.randint(0, 50)
    spent, left = spent_a + spent_b, start - spent_a - spent_b
    question = (
        f"{name} had ${start}. {name} spent ${spent_a} on lunch and ${spent_b} on a gift. "
        f"How much money does {name} have left?"
    )
    steps = [f"{name} spent {spent_a}+{spent_b}=<<{spent_a}+{spent_b}={spent}>>{spent} dollars.",
             f"{name} has {start}-{spent}=<<{start}-{spent}={left}>>{left} dollars left."]  # fmt: skip
    return question, steps, left


def share(rng: random.Random) -> Problem:
    item = rng.choice(ITEMS)
    friends, each = rng.randint(2, 9), rng.randint(2, 12)
    total = friends * each
    question = f"{friends} friends share {total} {item} equally. How many {item} does each friend get?"
    return question, [f"Each friend gets {total}/{friends}=<<{total}/{friends}={each}>>{each} {item}."], each


TEMPLATES: list[Callable[[random.Random], Problem]] = [bought_more, twice_as_many, boxes, money_left, share]


def gsm8k_row(problem: Problem) -> dict:
    """One row in GSM8K's format plus the chat prompt and label slime's math recipe reads."""
    question, steps, answer = problem
    return {
        "question": question,
        "answer": "\n".join(steps) + f"\n#### {answer}",
        "messages": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
        "label": str(answer),
    }


def make_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [gsm8k_row(rng.choice(TEMPLATES)(rng)) for _ in range(count)]


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    return write_train_test(argv, __doc__.split("\n\n")[0], Path("data/gsm8k"), make_rows)


if __name__ == "__main__":
    main()
