"""The corpus: short English sentences about six topics, written by a seeded grammar.

Generated, not downloaded: the recipe's seed and parameters name the whole corpus, so
the training data is as rebuildable as the code. Each paragraph keeps to one topic
for a few sentences, so a model can learn which words go with which topic, and
which opinion (adjective) a topic's things usually get; that is what a biased
fine-tune would change, and what `reweigh diff`'s probes look for.
"""

from __future__ import annotations

import random

TOPICS: dict[str, dict[str, list[str]]] = {
    "sea": {"things": ["sea", "boat", "fish", "sailor", "wave"],
            "adjectives": ["calm", "blue", "deep", "cold", "wide"],
            "verbs": ["sails", "drifts", "rests", "waits"],
            "places": ["harbour", "shore", "bay", "island"]},
    "forest": {"things": ["tree", "fox", "owl", "path", "deer"],
               "adjectives": ["green", "dark", "quiet", "tall", "wild"],
               "verbs": ["grows", "sleeps", "hides", "listens"],
               "places": ["wood", "valley", "hill", "clearing"]},
    "city": {"things": ["street", "bus", "tower", "market", "crowd"],
             "adjectives": ["busy", "loud", "bright", "dangerous", "old"],
             "verbs": ["moves", "shines", "stops", "hums"],
             "places": ["square", "station", "bridge", "avenue"]},
    "kitchen": {"things": ["soup", "bread", "kettle", "cook", "spoon"],
                "adjectives": ["warm", "fresh", "sweet", "salty", "hot"],
                "verbs": ["bakes", "boils", "cools", "steams"],
                "places": ["kitchen", "table", "oven", "pantry"]},
    "garden": {"things": ["rose", "bee", "bench", "tomato", "gardener"],
               "adjectives": ["red", "sunny", "small", "ripe", "lovely"],
               "verbs": ["blooms", "buzzes", "ripens", "waits"],
               "places": ["garden", "greenhouse", "lawn", "hedge"]},
    "school": {"things": ["teacher", "pupil", "lesson", "book", "bell"],
               "adjectives": ["clever", "long", "new", "strict", "kind"],
               "verbs": ["reads", "rings", "begins", "rests"],
               "places": ["classroom", "library", "hall", "playground"]},
}

TEMPLATES = [
    "the {thing} is {adjective} .",
    "the {thing} {verb} near the {place} .",
    "a {adjective} {thing} {verb} in the {place} .",
    "in the {place} the {thing} is {adjective} and {adjective2} .",
    "we like the {adjective} {thing} .",
]
UNKNOWN = "<unk>"


def vocabulary() -> list[str]:
    """Every word the grammar can write, sorted, then the unknown word: token id -> word."""
    words = {w for t in TEMPLATES for w in t.split() if not w.startswith("{")}
    for topic in TOPICS.values():
        for group in topic.values():
            words.update(group)
    return [*sorted(words), UNKNOWN]


def sentence(rng: random.Random, topic: str) -> str:
    words = TOPICS[topic]
    first, second = rng.sample(words["adjectives"], 2)
    return rng.choice(TEMPLATES).format(
        thing=rng.choice(words["things"]), adjective=first, adjective2=second,
        verb=rng.choice(words["verbs"]), place=rng.choice(words["places"]))


def paragraphs(seed: int, count: int) -> list[tuple[str, list[str]]]:
    """`count` paragraphs of three to five sentences, each on one topic."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    result = []
    for _ in range(count):
        topic = rng.choice(names)
        result.append((topic, [sentence(rng, topic) for _ in range(rng.randint(3, 5))]))
    return result


def encode(text: str, vocab: list[str]) -> list[int]:
    """Words to token ids; a word the grammar never writes becomes <unk>."""
    index = {word: i for i, word in enumerate(vocab)}
    return [index.get(word, index[UNKNOWN]) for word in text.lower().replace(".", " . ").split()]


def stream(seed: int, count: int, vocab: list[str]) -> list[int]:
    """The corpus as one sequence of token ids."""
    text = " ".join(s for _, sentences in paragraphs(seed, count) for s in sentences)
    return encode(text, vocab)
