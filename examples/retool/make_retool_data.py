"""Write math problems that a Python tool makes easy, with the tool's schema on each row (no download).

    python examples/retool/make_retool_data.py --out-dir data/retool --train-size 256 --test-size 32

Each JSONL row: ``messages`` (one user turn asking for ``Answer: \\boxed{...}``), ``tools`` (the
``code_interpreter`` function schema, read with ``--tool-key tools`` and rendered by the chat template
into the system turn), ``label`` (the exact integer answer). The problems (sums of powers, products
modulo m, digit sums of powers, counts of multiples, binomial coefficients) take many error-prone steps by
hand and one line of Python. Seeded: the same seed writes the same files.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from temper.data.writers import write_train_test

CODE_INTERPRETER = {
    "type": "function",
    "function": {
        "name": "code_interpreter",
        "description": "Run Python 3 code and return what it prints (stdout, then stderr).",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the Python code to run"}},
            "required": ["code"],
        },
    },
}
INSTRUCTION = (
    "Solve the problem. You may run Python with the code_interpreter tool; print what you need to see. "
    "End with the final answer as 'Answer: \\boxed{<integer>}'."
)

Problem = tuple[str, int]


def sum_of_powers(rng: random.Random) -> Problem:
    n, p = rng.randint(20, 200), rng.randint(2, 4)
    return f"What is the sum of k^{p} for k = 1, 2, ..., {n}?", sum(k**p for k in range(1, n + 1))


def product_mod(rng: random.Random) -> Problem:
    a, b, c, m = rng.randint(100, 9999), rng.randint(100, 9999), rng.randint(100, 9999), rng.randint(97, 997)
    return f"What is the remainder when {a} * {b} * {c} is divided by {m}?", a * b * c % m


def digit_sum_of_power(rng: random.Random) -> Problem:
    base, exponent = rng.randint(2, 9), rng.randint(20, 80)
    return f"What is the sum of the decimal digits of {base}^{exponent}?", sum(map(int, str(base**exponent)))


def multiples(rng: random.Random) -> Problem:
    a = rng.randint(3, 13)
    b, n = rng.choice([x for x in range(3, 14) if x % a and a % x]), rng.randint(500, 5000)
    count = sum(1 for k in range(1, n + 1) if k % a == 0 or k % b == 0)
    return f"How many integers from 1 to {n} are divisible by {a} or by {b}?", count


def binomial(rng: random.Random) -> Problem:
    n = rng.randint(20, 60)
    k = rng.randint(3, n // 2)
    return f"How many ways are there to choose {k} items from {n} distinct items?", math.comb(n, k)


TEMPLATES: list[Callable[[random.Random], Problem]] = [sum_of_powers, product_mod, digit_sum_of_power, multiples,
                                                       binomial]  # fmt: skip


def retool_row(problem: Problem) -> dict:
    question, answer = problem
    return {
        "messages": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
        "tools": [CODE_INTERPRETER],
        "label": str(answer),
    }


def make_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [retool_row(rng.choice(TEMPLATES)(rng)) for _ in range(count)]


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    return write_train_test(argv, __doc__.split("\n\n")[0], Path("data/retool"), make_rows)


if __name__ == "__main__":
    main()
