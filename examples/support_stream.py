"""A scripted stream for a support agent's memory: product facts that change, two users' private details, the
team lead's corrections (product answers, and the house style), duplicates and chatter. Deterministic, so the
demos and the tests see the same few hundred items."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from engramma import Item

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)

# (key, value per day: the value in force from that day on). The refund window moves on the second day, so
# that even the two-day run (--quick) sees a fact change.
PRODUCT_FACTS = {
    "refund_window": {0: "Refunds are accepted within 30 days of delivery.",
                      1: "Refunds are accepted within 45 days of delivery."},
    "shipping_fee": {0: "Standard shipping costs 4.99 euros; orders over 50 euros ship free.",
                     2: "Standard shipping costs 5.49 euros; orders over 60 euros ship free."},
    "support_hours": {0: "The support line is open Monday to Friday, 9:00 to 17:00 CET.",
                      4: "The support line is open every day, 8:00 to 20:00 CET."},
    "warranty": {0: "Every kettle carries a two-year warranty against manufacturing defects."},
    "exchange": {0: "Customers may exchange a product for a different colour free of charge."},
    "express": {1: "Express delivery arrives the next working day and costs 12 euros."},
}

USER_DETAILS = {
    "user:alice": [
        "Alice's order #A-1042 is a red kettle delivered on 2 March.",
        "Alice prefers to be contacted by email at alice@example.com.",
        "Alice is allergic to nickel, so she asked for the ceramic model.",
        "Alice lives in Lyon and works night shifts.",
    ],
    "user:bob": [
        "Bob's order #B-2210 is a steel toaster still in transit.",
        "Bob wants phone calls only, at +33 6 12 34 56 78.",
        "Bob returned a blender last year because it was too loud.",
        "Bob is moving to Marseille at the end of the month.",
    ],
}

# The house style, which the team lead keeps correcting: a sentence or two, ending with the sign-off.
SIGN_OFF = "Kind regards, the Kettle team."
HOUSE_STYLE = f"Answer in a sentence or two and end with '{SIGN_OFF}'"


def house_reply(answer: str) -> str:
    return f"{answer} {SIGN_OFF}"


# Product answers the team lead corrects, by the day they are first taught: (question, the right answer, the
# phrase a right answer must contain: its probe). Taught as demonstrations in the house style, signed off.
PRODUCT_ANSWERS = {
    0: [("How do I reset my Kettle Pro?", "Hold the power button for five seconds until the light blinks blue.",
         "blinks blue"),
        ("Can the kettle lid go in the dishwasher?", "Yes, the lid is dishwasher safe, but the base is not.",
         "dishwasher safe"),
        ("What does the red light on my kettle mean?", "A red light means the kettle is empty: add water.",
         "kettle is empty")],
    1: [("How do I descale my kettle?", "Boil half water and half white vinegar, then rinse it twice.",
         "white vinegar"),
        ("Which power cable does the Kettle Pro use?", "The Kettle Pro uses a standard C13 power cable.", "C13"),
        ("Why does my kettle switch off too early?", "Limescale covers the sensor: descale the kettle.",
         "limescale")],
    2: [("Can I order spare filters?", "Yes, spare filters come in packs of three for 9 euros.", "packs of three"),
        ("Is the Kettle Pro cordless?", "Yes, it lifts off a 360-degree base.", "360-degree"),
        ("How loud is the Kettle Pro?", "It runs at about 45 decibels, quieter than a conversation.",
         "45 decibels")],
    3: [("How much water does the Kettle Pro hold?", "It holds 1.7 litres, about seven cups.", "1.7 litres"),
        ("Does the kettle keep water warm?", "Yes, keep-warm mode holds the temperature for 30 minutes.",
         "30 minutes"),
        ("How do I register my warranty?", "Register online at kettle.example/warranty with your order number.",
         "kettle.example/warranty")],
    4: [("Can I use the kettle abroad?", "Only on 220-240 volt mains: it has no voltage converter.",
         "220-240 volt"),
        ("How often should I clean the filter?", "Rinse the filter under warm water once a week.", "once a week")],
}

# Replies the team lead rewrote because they broke the house style, one a day: (question, the answer as it should
# read before the sign-off). Their probe is the sign-off itself: does the adapter answer in the house style?
STYLE_FIXES = {
    0: ("Do you sell gift cards?", "Yes, gift cards from 10 to 100 euros are sold on our website."),
    1: ("Can I collect my order from a shop?", "Yes, you can collect it from our Paris shop."),
    2: ("Do you ship to Switzerland?", "Yes, we ship to Switzerland within five working days."),
    3: ("Can I pay by bank transfer?", "Yes, bank transfers are accepted for orders over 100 euros."),
    4: ("Is the Kettle Pro made of plastic?", "No, it is made of stainless steel and glass."),
}

# Questions no correction ever answers: whether the agent answers them in the house style, from its weights
# alone, shows the style was internalised rather than the taught replies memorised.
UNSEEN_QUESTIONS = [
    "Do you have a student discount?",
    "Can I change my delivery address?",
    "Is the kettle safe for children to use?",
    "Can I buy a spare lid?",
    "Do you sell teapots?",
    "How do I contact your press office?",
]

CHATTER = [
    "Customer said thanks and closed the chat.",
    "Customer asked whether we are a real company.",
    "Agent apologised for the wait in the queue.",
    "Customer shared a photo of their cat.",
    "Customer asked about the weather in Lyon.",
    "Agent confirmed the ticket number to the customer.",
]

# Paraphrased questions: (question, scope asking, words the right answer contains)
QUESTIONS = [
    ("How long does someone have to send an item back?", "global", "45 days"),
    ("How much is standard postage now?", "global", "5.49"),
    ("When can people phone the helpdesk?", "global", "every day"),
    ("Is there a guarantee if the kettle breaks?", "global", "two-year"),
    ("Can I swap my purchase for another colour?", "global", "colour"),
    ("Which metal should we avoid for this customer?", "user:alice", "nickel"),
    ("How should we reach her?", "user:alice", "email"),
    ("Where is his package?", "user:bob", "in transit"),
    ("How does he want to be contacted?", "user:bob", "phone calls"),
]


def corrections(day: int, at: datetime, rng: random.Random) -> list[Item]:
    """The team lead's corrections of one day, each said once to three times: the repeats are exact, so the
    policy stores the first copy and counts the others as its recurrences."""
    taught: list[tuple[str, str, str | None]] = list(PRODUCT_ANSWERS.get(day, []))
    if day in STYLE_FIXES:
        question, answer = STYLE_FIXES[day]
        taught.append((question, answer, None))
    items = []
    for question, answer, phrase in taught:
        if phrase is None:  # a house-style fix: learned when the adapter signs off the way the lead asked
            text = f"House style ({HOUSE_STYLE}): the reply to \"{question}\" should read: {answer} {SIGN_OFF}"
            probe = {"question": question, "answer": SIGN_OFF}
        else:
            text = f"When asked \"{question}\", answer: {answer}"
            probe = {"question": question, "answer": phrase}
        for _ in range(rng.randint(1, 3)):
            items.append(Item(text=text, kind="correction", scope="global", source="admin", prompt=question,
                              response=house_reply(answer), probe=probe,
                              ts=at + timedelta(minutes=rng.randint(0, 480))))
    return items


def stream(days: int = 5, seed: int = 7) -> list[tuple[int, list[Item]]]:
    """Items per day, in time order. Day d restates the facts in force (agents hear them again, several times),
    adds user details, the lead's corrections and chatter."""
    rng = random.Random(seed)
    out = []
    for day in range(days):
        at = START + timedelta(days=day)
        items: list[Item] = []
        for key, versions in PRODUCT_FACTS.items():
            since = max((d for d in versions if d <= day), default=None)
            if since is None:
                continue
            for _ in range(rng.randint(3, 6)):  # heard several times a day: duplicates
                items.append(Item(text=versions[since], kind="fact", scope="global", source="docs", key=key,
                                  ts=at + timedelta(minutes=rng.randint(0, 480))))
        for scope, details in USER_DETAILS.items():
            for text in details[: 1 + day]:
                items.append(Item(text=text, kind="fact", scope=scope, source="user",
                                  ts=at + timedelta(minutes=rng.randint(0, 480))))
        items += corrections(day, at, random.Random(seed * 1000 + day))
        for _ in range(rng.randint(20, 30)):
            items.append(Item(text=rng.choice(CHATTER), kind="conversation", scope=f"session:d{day}",
                              source="chat", ts=at + timedelta(minutes=rng.randint(0, 480))))
        items.sort(key=lambda item: item.ts)
        out.append((day, items))
    return out
