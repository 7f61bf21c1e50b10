"""Extraction: read a one-sentence record in prose, answer `name=...; city=...; age=...; job=...; year=...`.

The prose comes from a few templates that put the fields in different orders, so the model has to
find each field rather than copy positions; the answer format never changes, so a 135M model learns
it in a few hundred steps. Every answer is checkable exactly.
"""

from __future__ import annotations

import random
import re

from .sampling import distinct_items

NAME = "extraction"
FIELDS = ("name", "city", "age", "job", "year")

_FIRST = ["Maria", "James", "Aiko", "Omar", "Elena", "Tomas", "Priya", "Lucas", "Fatima", "Noah", "Ingrid", "Kofi",
          "Sofia", "Mateo", "Hana", "Victor", "Lena", "Ravi", "Chloe", "Diego", "Yara", "Felix", "Nadia", "Owen",
          "Mei", "Samuel", "Amara", "Jonas", "Leila", "Bruno"]
_LAST = ["Lopez", "Smith", "Tanaka", "Haddad", "Petrova", "Novak", "Sharma", "Silva", "Khan", "Brown", "Larsen",
         "Mensah", "Rossi", "Garcia", "Kim", "Dubois", "Fischer", "Patel", "Martin", "Reyes", "Costa", "Weber",
         "Ahmed", "Walsh", "Chen", "Okafor", "Nowak", "Berg", "Moreau", "Santos"]
_CITIES = ["Lisbon", "Toronto", "Osaka", "Cairo", "Berlin", "Lima", "Nairobi", "Oslo", "Madrid", "Seoul", "Dublin",
           "Mumbai", "Prague", "Denver", "Hanoi", "Vienna", "Accra", "Porto", "Austin", "Krakow", "Milan", "Quito",
           "Perth", "Lyon", "Bergen", "Tunis", "Boston", "Manila", "Zurich", "Leeds"]
_JOBS = ["baker", "nurse", "pilot", "teacher", "farmer", "lawyer", "chemist", "painter", "plumber", "dentist",
         "architect", "engineer", "librarian", "tailor", "journalist", "carpenter", "electrician", "pharmacist",
         "mechanic", "florist"]
_TEMPLATES = [
    "{name} is a {age}-year-old {job} who moved to {city} in {year}.",
    "In {year}, {name}, aged {age}, started work as {a_job} in {city}.",
    "{city} has been home to {name} since {year}; the {age}-year-old works as {a_job}.",
    "Meet {name}, {a_job} from {city}. Age: {age}. Hired in {year}.",
    "The {job} {name} ({age}) opened a shop in {city} in {year}.",
]
_INSTRUCTION = ("Extract the name, city, age, job and year from the text. "
                "Answer exactly as: name=...; city=...; age=...; job=...; year=...\nText: ")


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _item(rng: random.Random) -> dict:
    # Ages 19-79 all read "a NN-year-old", so the templates need no article logic for them.
    fields = {"name": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", "city": rng.choice(_CITIES),
              "age": str(rng.randint(19, 79)), "job": rng.choice(_JOBS), "year": str(rng.randint(1990, 2023))}
    text = rng.choice(_TEMPLATES).format(**fields, a_job=_article(fields["job"]))
    return {"prompt": _INSTRUCTION + text, "response": format_answer(fields), "answer": fields}


def format_answer(fields: dict) -> str:
    return "; ".join(f"{k}={fields[k]}" for k in FIELDS)


def generate(n: int, seed: int) -> list[dict]:
    """`n` items with distinct prompts; the same (n, seed) always gives the same list."""
    return distinct_items(NAME, _item, n, seed)


def _normalise(text: str) -> str:
    return re.sub(r"\s*([;=])\s*", r"\1", " ".join(text.split()))


def check(response_text: str, item: dict) -> bool:
    """Exact match of the whole answer line; only whitespace (around separators, repeated, at the ends) is forgiven."""
    return _normalise(response_text) == _normalise(format_answer(item["answer"]))
