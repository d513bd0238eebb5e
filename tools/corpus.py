"""Deterministic training corpus for the embedded models (development tool).

Every document is a pure function of (seed, index), so the corpus never needs to be
stored: the tokenizer trainer, the model trainer and the evaluator regenerate it.
Values (names, cities, pseudo-words, number pairs) are split by a stable hash into a
training part and a held-out part; `held_out=True` draws only from the held-out part,
which is how `eval_model.py` asks about values the model never saw.

Families: story, chat, capital, math, json, echo, tool.  Chat-shaped families are
rendered with the model's own chat template (`chat_template.jinja`), so training and
serving see byte-identical prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
BOS, EOS = "<s>", "</s>"

# Family weights in the training mix: stories cost few tokens, copying is weighted up.
FAMILY_WEIGHTS = {
    "story": 0.08,
    "chat": 0.10,
    "capital": 0.12,
    "math": 0.14,
    "json": 0.10,
    "echo": 0.14,
    "tool": 0.32,
}

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi",
    "Russia": "Moscow", "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Nigeria": "Abuja", "Ghana": "Accra", "Morocco": "Rabat",
    "Greece": "Athens", "Turkey": "Ankara", "Poland": "Warsaw", "Austria": "Vienna",
    "Hungary": "Budapest", "Sweden": "Stockholm", "Norway": "Oslo", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Ireland": "Dublin", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Australia": "Canberra",
    "New Zealand": "Wellington", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "South Korea": "Seoul", "Iran": "Tehran", "Iraq": "Baghdad",
    "Cuba": "Havana", "Colombia": "Bogota", "Ukraine": "Kyiv", "Romania": "Bucharest",
    "Czechia": "Prague", "Croatia": "Zagreb", "Serbia": "Belgrade", "Ethiopia": "Addis Ababa",
    "Pakistan": "Islamabad", "Nepal": "Kathmandu", "Iceland": "Reykjavik",
    "Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Venezuela": "Caracas",
    "Uruguay": "Montevideo", "Senegal": "Dakar", "Tunisia": "Tunis", "Qatar": "Doha",
    "Jordan": "Amman",
}

CITIES = sorted(set(CAPITALS.values()) | {
    "London", "New York", "Chicago", "Boston", "Denver", "Seattle", "Austin", "Miami",
    "Toronto", "Montreal", "Vancouver", "Sydney", "Melbourne", "Perth", "Osaka", "Kyoto",
    "Shanghai", "Mumbai", "Delhi", "Istanbul", "Barcelona", "Valencia", "Milan", "Naples",
    "Munich", "Hamburg", "Cologne", "Lyon", "Marseille", "Nice", "Porto", "Geneva",
    "Zurich", "Krakow", "Gdansk", "Riga", "Tallinn", "Vilnius", "Sofia", "Seville",
    "Glasgow", "Edinburgh", "Cardiff", "Belfast", "Dallas", "Houston", "Phoenix",
    "Atlanta", "Detroit", "Portland", "Oakland", "Nashville", "Memphis", "Calgary",
    "Quebec", "Lagos", "Durban", "Cape Town", "Casablanca", "Marrakesh", "Alexandria",
    "Dubai", "Riyadh", "Karachi", "Lahore", "Dhaka", "Chennai", "Kolkata", "Busan",
    "Taipei", "Singapore", "Auckland", "Hobart", "Lima", "Quito", "Havana", "Recife",
    "Salvador", "Rosario", "Cordoba", "Medellin", "Cali", "Tijuana", "Monterrey",
    "Guadalajara", "Antwerp", "Ghent", "Utrecht", "Rotterdam", "Bergen", "Malmo",
    "Aarhus", "Tampere", "Turku", "Split", "Graz", "Salzburg", "Innsbruck", "Bologna",
    "Florence", "Venice", "Turin", "Genoa", "Palermo", "Bilbao", "Granada", "Leeds",
    "Bristol", "Oxford", "Cambridge", "York", "Dover", "Bath",
})

NAMES = [
    "Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Lucy", "Leo", "Emma", "Jack",
    "Sara", "Tim", "Zoe", "Finn", "Ella", "Noah", "Ruby", "Owen", "Ivy", "Eli", "Nora",
    "Liam", "Rosa", "Hugo", "Ada", "Otto", "Maya", "Theo", "Lena", "Jonas", "Clara",
    "Felix", "Alice", "Oscar", "Grace", "Adam", "Julia", "Paul", "Eva", "Mark", "Lisa",
    "Kai", "Amir", "Yuki", "Ravi", "Omar", "Lara", "Iris", "Dan",
]

ANIMALS = ["cat", "dog", "bird", "fox", "bear", "rabbit", "mouse", "frog", "duck", "lion",
           "owl", "pig", "horse", "cow", "fish", "bee", "turtle", "deer"]
ADJECTIVES = ["little", "big", "happy", "small", "brave", "kind", "shy", "funny", "old",
              "young", "curious", "sleepy"]
ACTIVITIES = ["play in the park", "eat apples", "run fast", "sing songs", "read books",
              "swim in the lake", "climb trees", "draw pictures", "look at the stars",
              "dance in the rain", "help his friends", "bake cakes", "fly kites"]
PLACES = ["the forest", "the garden", "the river", "the big hill", "the old house",
          "the beach", "the farm", "the town"]
OBJECTS = ["a red ball", "a shiny stone", "a small box", "a blue hat", "a big cake",
           "a lost key", "a yellow flower", "a funny book", "an old map"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink",
          "gray", "brown", "gold", "silver", "teal"]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Japanese", "Dutch", "Polish",
             "Greek", "Swedish", "Turkish"]
WEATHER = ["sunny", "rainy", "cloudy", "windy", "snowy", "foggy", "stormy", "clear"]

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + [
    c + v + e for c in "bdgklmnprstv" for v in "aeiou" for e in "nrsl"]

GREETINGS = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi", "Hi! How can I help you today?"),
    ("Good morning!", "Good morning! How can I help you today?"),
    ("How are you?", "I am fine, thank you. How can I help you?"),
    ("Thank you!", "You are welcome!"),
    ("Thanks a lot.", "You are welcome!"),
    ("Who are you?", "I am a small assistant. I can answer questions and call tools."),
    ("Goodbye!", "Goodbye! Have a nice day."),
    ("Tell me a joke.", "Why did the cat sit on the computer? To keep an eye on the mouse!"),
    ("What can you do?", "I can answer questions, do small sums, and call tools."),
]

SYSTEM_PROMPTS = [None, None, "You are a helpful assistant.", "You are a friendly assistant.",
                  "Answer briefly."]


def held_out(value: str) -> bool:
    """A stable 1-in-8 split of every value pool: those are reserved for evaluation."""
    return hashlib.sha256(value.encode()).digest()[0] % 8 == 0


def pick(rng: random.Random, pool: list, holdout: bool):
    """Draw from the training part of `pool` or, with `holdout`, from the held-out part."""
    while True:
        value = rng.choice(pool)
        if held_out(str(value)) == holdout:
            return value


def pseudo_word(rng: random.Random, holdout: bool, syllables: tuple[int, int] = (2, 3)) -> str:
    while True:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*syllables)))
        if held_out(word) == holdout:
            return word


def _tojson(value, indent=None) -> str:
    """Hugging Face's `tojson`: plain json.dumps, no HTML escaping."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def load_template() -> jinja2.Template:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    return env.from_string(TEMPLATE_PATH.read_text())


@dataclass
class Example:
    """One document: `prompt` is what the server would send, `answer` what follows."""
    family: str
    prompt: str
    answer: str
    expected: dict = field(default_factory=dict)
    tools: list | None = None

    @property
    def text(self) -> str:
        return self.prompt + self.answer


class Corpus:
    def __init__(self, seed: int = 1234, held_out: bool = False, weights: dict[str, float] | None = None,
                 letters: float = 0.0):
        self.seed = seed
        self.held_out = held_out
        self.letters = letters
        self.template = load_template()
        self.families = list(FAMILY_WEIGHTS)
        mix = dict(FAMILY_WEIGHTS, **(weights or {}))
        unknown = set(mix) - set(FAMILY_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown corpus families {sorted(unknown)}; known: {self.families}")
        self.weights = [mix[f] for f in self.families]

    def _word(self, rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
        """A value the model must copy: a pseudo-word of known syllables or, with
        probability `letters`, a string of random letters, which the tokenizer splits into
        rare pieces as it does real names it never saw (held-out names like "Ella")."""
        if self.letters and rng.random() < self.letters:
            while True:
                word = "".join(rng.choice(string.ascii_lowercase)
                               for _ in range(rng.randint(2 * syllables[0], 3 * syllables[1])))
                if held_out(word) == self.held_out:
                    return word
        return pseudo_word(rng, self.held_out, syllables)

    def example(self, index: int, family: str | None = None) -> Example:
        rng = random.Random(f"{self.seed}:{index}:{family}")
        family = family or rng.choices(self.families, self.weights)[0]
        return getattr(self, f"_{family}")(rng)

    # ---------------------------------------------------------------- rendering
    def _dialog(self, rng, family, user, answer, expected, tools=None, system=None,
              tail=None) -> Example:
        system = system if system is not None else rng.choice(SYSTEM_PROMPTS)
        messages = ([{"role": "system", "content": system}] if system else [])
        messages.append({"role": "user", "content": user})
        prompt = self.template.render(messages=messages, tools=tools, bos_token=BOS,
                                      add_generation_prompt=True)
        full = answer + "<|im_end|>\n" + (tail or "")
        return Example(family, prompt, full, expected, tools)

    def render(self, messages: list[dict], tools: list | None = None) -> str:
        return self.template.render(messages=messages, tools=tools, bos_token=BOS,
                                    add_generation_prompt=True)

    # ---------------------------------------------------------------- families
    def _story(self, rng) -> Example:
        name = pick(rng, NAMES, self.held_out) if rng.random() < 0.6 else \
            self._word(rng, (2, 2)).capitalize()
        animal, adj = rng.choice(ANIMALS), rng.choice(ADJECTIVES)
        article = "an" if adj[0] in "aeiou" else "a"
        first = f"Once upon a time, there was {article} {adj} {animal} named {name}."
        body = [f"{name} liked to {rng.choice(ACTIVITIES)}.",
                f"One day, {name} went to {rng.choice(PLACES)} and found {rng.choice(OBJECTS)}.",
                f"{name} was very happy.",
                rng.choice([f"{name} showed it to a friend.", f"{name} took it home.",
                            f"{name} shared it with mom."]),
                "The end."]
        return Example("story", BOS + first, " " + " ".join(body) + EOS, {"name": name})

    def _chat(self, rng) -> Example:
        if rng.random() < 0.5:
            user, answer = rng.choice(GREETINGS)
            return self._dialog(rng, "chat", user, answer, {"answer": answer})
        name = pick(rng, NAMES, self.held_out) if rng.random() < 0.5 else \
            self._word(rng).capitalize()
        user = rng.choice(["My name is {n}.", "Hi, I am {n}.", "Hello, my name is {n}!",
                           "I'm {n}."]).format(n=name)
        answer = f"Nice to meet you, {name}! How can I help you?"
        return self._dialog(rng, "chat", user, answer, {"answer": answer})

    def _capital(self, rng) -> Example:
        country = rng.choice(sorted(CAPITALS))
        user = rng.choice(["What is the capital of {c}?", "What's the capital of {c}?",
                           "Which city is the capital of {c}?",
                           "Tell me the capital of {c}."]).format(c=country)
        answer = f"The capital of {country} is {CAPITALS[country]}."
        return self._dialog(rng, "capital", user, answer, {"answer": answer})

    def _math_pair(self, rng) -> tuple[int, int, str]:
        while True:
            a, b, op = rng.randint(0, 20), rng.randint(0, 20), rng.choice("+-")
            if op == "-" and b > a:
                a, b = b, a
            if held_out(f"{a}{op}{b}") == self.held_out:
                return a, b, op

    def _math(self, rng) -> Example:
        a, b, op = self._math_pair(rng)
        c = a + b if op == "+" else a - b
        word = "plus" if op == "+" else "minus"
        user = rng.choice(["What is {a} {op} {b}?", "What is {a} {w} {b}?",
                           "Compute {a} {op} {b}.", "How much is {a} {op} {b}?"]
                          ).format(a=a, b=b, op=op, w=word)
        answer = f"{a} {op} {b} = {c}."
        return self._dialog(rng, "math", user, answer, {"answer": answer})

    def _json(self, rng) -> Example:
        if rng.random() < 0.5:
            country = rng.choice(sorted(CAPITALS))
            user = rng.choice(["Give the capital of {c} as JSON.",
                               "Answer in JSON: what is the capital of {c}?"]).format(c=country)
            obj = {"country": country, "capital": CAPITALS[country]}
        else:
            a, b, op = self._math_pair(rng)
            user = rng.choice(["Return {a} {op} {b} as JSON.",
                               "Answer in JSON: what is {a} {op} {b}?"]).format(a=a, b=b, op=op)
            obj = {"result": a + b if op == "+" else a - b}
        return self._dialog(rng, "json", user, _tojson(obj), {"json": obj})

    def _echo(self, rng) -> Example:
        words = [self._word(rng, (1, 3)) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            words = [w.capitalize() for w in words]
        phrase = " ".join(words)
        user = rng.choice(["Repeat after me: {p}", "Say \"{p}\".", "Please repeat: {p}",
                           "Echo this: {p}"]).format(p=phrase)
        return self._dialog(rng, "echo", user, phrase, {"answer": phrase})

    # ---------------------------------------------------------------- tools
    def _value(self, rng, kind: str):
        if kind == "city":
            return pick(rng, CITIES, self.held_out) if rng.random() < 0.6 else \
                self._word(rng).capitalize()
        if kind == "name":
            return pick(rng, NAMES, self.held_out) if rng.random() < 0.5 else \
                self._word(rng).capitalize()
        if kind == "int":
            while True:
                n = rng.randint(1, 120)
                if held_out(f"n{n}") == self.held_out:
                    return n
        if kind == "color":
            return rng.choice(COLORS)
        if kind == "language":
            return rng.choice(LANGUAGES)
        if kind == "word":
            return self._word(rng)
        raise ValueError(kind)

    def _tool_specs(self, rng) -> list[dict]:
        """Known tools with natural phrasings, plus invented ones with pseudo-word names."""
        known = [
            {"name": "get_weather", "args": [("city", "city")],
                 "asks": ["What is the weather in {city}?", "How is the weather in {city} today?",
                       "Is it raining in {city}?"],
                 "result": "{w}", "final": "The weather in {city} is {w}."},
            {"name": "get_time", "args": [("city", "city")],
                 "asks": ["What time is it in {city}?", "Tell me the local time in {city}."],
                 "result": "{h}:00", "final": "It is {h}:00 in {city}."},
            {"name": "set_timer", "args": [("minutes", "int")],
                 "asks": ["Set a timer for {minutes} minutes.", "Start a {minutes} minute timer."],
                 "result": "ok", "final": "Your timer for {minutes} minutes is set."},
            {"name": "send_message", "args": [("to", "name"), ("text", "word")],
                 "asks": ["Send {to} the message {text}.", "Tell {to}: {text}"],
                 "result": "sent", "final": "I sent your message to {to}."},
            {"name": "translate", "args": [("text", "word"), ("language", "language")],
                 "asks": ["Translate {text} into {language}.", "How do you say {text} in {language}?"],
                 "result": "{r}", "final": "In {language}, {text} is {r}."},
            {"name": "book_table", "args": [("restaurant", "name"), ("people", "int")],
                 "asks": ["Book a table at {restaurant} for {people} people.",
                       "Reserve {restaurant} for {people}."],
                 "result": "booked", "final": "Your table at {restaurant} for {people} is booked."},
            {"name": "get_population", "args": [("city", "city")],
                 "asks": ["How many people live in {city}?", "What is the population of {city}?"],
                 "result": "{n}", "final": "About {n} people live in {city}."},
            {"name": "paint_wall", "args": [("color", "color")],
                 "asks": ["Paint the wall {color}.", "Make the wall {color}, please."],
                 "result": "done", "final": "The wall is now {color}."},
        ]
        specs = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.45:
                specs.append(rng.choice(known))
            else:
                verb, noun = pseudo_word(rng, self.held_out, (1, 2)), pseudo_word(rng, self.held_out, (1, 2))
                n_args = rng.randint(1, 2)
                args = []
                for _ in range(n_args):
                    arg_name = pseudo_word(rng, self.held_out, (1, 2))
                    if arg_name not in [a for a, _ in args]:
                        args.append((arg_name, rng.choice(["city", "name", "int", "word", "color"])))
                placeholders = " and ".join(f"{a} {{{a}}}" for a, _ in args)
                specs.append({
                    "name": f"{verb}_{noun}", "args": args,
                    "asks": [f"Please {verb} the {noun} with {placeholders}.",
                          f"Use {verb}_{noun} with {placeholders}.",
                          f"Can you {verb} {noun} for {placeholders}?"],
                    "result": "ok", "final": f"Done, the {noun} is {verb}ed."})
        unique = {s["name"]: s for s in specs}
        return list(unique.values())

    @staticmethod
    def _schema(spec: dict) -> dict:
        types = {"int": "integer"}
        return {"type": "function", "function": {
            "name": spec["name"],
            "description": "",
            "parameters": {"type": "object",
                           "properties": {a: {"type": types.get(k, "string")} for a, k in spec["args"]},
                           "required": [a for a, _ in spec["args"]]}}}

    def _tool(self, rng) -> Example:
        specs = self._tool_specs(rng)
        tools = [self._schema(s) for s in specs]
        if rng.random() < 0.1:  # tools offered but not needed: answer plainly
            country = rng.choice(sorted(CAPITALS))
            return self._dialog(rng, "tool", f"What is the capital of {country}?",
                              f"The capital of {country} is {CAPITALS[country]}.",
                              {"answer": ""}, tools=tools)
        spec = rng.choice(specs)
        values = {a: self._value(rng, k) for a, k in spec["args"]}
        user = rng.choice(spec["asks"]).format(**values)
        calls = [{"name": spec["name"], "arguments": values}]
        if rng.random() < 0.12 and len(spec["args"]) == 1:  # two calls in one turn
            (arg, kind), = spec["args"]
            other = {arg: self._value(rng, kind)}
            if other != values:
                user = user.rstrip(".?!") + f", and also for {other[arg]}."
                calls.append({"name": spec["name"], "arguments": other})
        answer = "".join(f"<tool_call>{_tojson(c)}</tool_call>" for c in calls)
        tail = None
        if rng.random() < 0.35 and len(calls) == 1:
            fill = dict(values, w=rng.choice(WEATHER), h=rng.randint(1, 12),
                        r=pseudo_word(rng, self.held_out), n=rng.randint(2, 900) * 1000)
            result = spec["result"].format(**fill)
            tool_turn = self.template.render(
                messages=[{"role": "tool", "content": result}], tools=None, bos_token="",
                add_generation_prompt=True)
            tail = tool_turn + spec["final"].format(**fill) + "<|im_end|>\n"
        return self._dialog(rng, "tool", user, answer, {"calls": calls}, tools=tools, tail=tail)

