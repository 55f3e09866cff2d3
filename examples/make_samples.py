"""Regenerate the sample datasets in this folder (deterministic): ``python examples/make_samples.py``."""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
WORDS = [
    "river",
    "stone",
    "cloud",
    "lamp",
    "violet",
    "orbit",
    "pepper",
    "maple",
    "quartz",
    "harbor",
    "velvet",
    "candle",
    "meadow",
    "rocket",
    "silver",
    "tundra",
    "amber",
    "falcon",
    "willow",
    "canyon",
    "ember",
    "frost",
    "garnet",
    "lantern",
    "marble",
    "nectar",
    "opal",
    "prism",
    "saffron",
    "thistle",
    "walnut",
    "zephyr",
    "cobalt",
    "dune",
    "glacier",
    "hazel",
    "jasper",
    "koala",
    "lotus",
    "mango",
    "nebula",
]


def uppercase(n: int = 400, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        phrase = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        if phrase in seen:
            continue
        seen.add(phrase)
        rows.append({"input": f"Shout this: {phrase}", "target": phrase.upper()})
    return rows


def sentiment(n: int = 300, seed: int = 11) -> list[dict[str, str]]:
    rng = random.Random(seed)
    good = ["loved", "enjoyed", "was delighted by", "would recommend", "was impressed by"]
    bad = ["hated", "regretted buying", "was disappointed by", "would avoid", "returned"]
    things = [f"the {w} {k}" for w in WORDS for k in ("kettle", "novel", "headphones", "tent")]
    rows, seen = [], set()
    while len(rows) < n:
        label = rng.choice(["positive", "negative"])
        text = f"I {rng.choice(good if label == 'positive' else bad)} {rng.choice(things)}."
        if text in seen:
            continue
        seen.add(text)
        rows.append({"input": text, "target": label, "label": label})
    return rows


def main() -> None:
    for name, rows in (("uppercase.jsonl", uppercase()), ("sentiment.jsonl", sentiment())):
        with (HERE / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
