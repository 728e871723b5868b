"""Writes tests/data/health_labels.jsonl: teacher answers labelled refusal or not, for the
refusal patterns' measured precision and recall (tests/test_health.py, docs/dag.md). Refusals in
the phrasings providers use (straight and typographic apostrophes, scope refusals, "As an AI");
answers that open like one but help ("I'm sorry to hear", "Unfortunately, the function ...",
"I can't stress this enough"), and short classifier answers. Run it to regenerate the file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

OPENERS = [
    "I'm sorry, but",
    "I’m sorry, but",
    "I am sorry, but",
    "Sorry, but",
    "I apologize, but",
    "I'm really sorry, but",
    "Unfortunately,",
    "I’m afraid",
]
BODIES = [
    "I can't assist with that.",
    "I can’t help with that request.",
    "I cannot provide that information.",
    "I am unable to help with this.",
    "I'm not able to answer that question.",
    "I won't be able to complete this task.",
    "I can only help with questions about our products.",
    "I must decline to write that.",
    "I cannot comply with this request.",
    "I don't have the ability to browse the internet.",
    "I can't generate content like that.",
    "I’m unable to share personal information about individuals.",
]
BARE = [
    "I cannot answer that question.",
    "I can't help with that.",
    "I can’t assist with that request.",
    "I am unable to provide medical advice.",
    "I'm not able to help with that.",
    "I won't be able to do that.",
    "I must decline this request.",
    "I must respectfully decline.",
    "As an AI language model, I cannot form personal opinions.",
    "As an AI, I don't have feelings or preferences.",
    "As an AI assistant, I am not able to access real-time data.",
    "Sorry, I can't do that.",
    "Apologies, but I cannot help with that.",
    "I’m sorry — I can’t provide that.",
    "I'm sorry. I cannot assist with that request.",
    "Unfortunately I can't help with requests like this one.",
    "I will not write that content.",
    "I can't provide assistance with that.",
    "I’m not able to provide that kind of content.",
    "I am not able to fulfill this request.",
]
HELPFUL = [
    "I'm sorry to hear that your order arrived damaged. Please reply with your order number "
    "and we will send a replacement.",
    "I’m sorry to hear about your loss. Here are some steps that can help: ...",
    "I'm sorry for the confusion earlier; the correct total is 42.",
    "I am sorry for the delay. Here is the summary you asked for: sales rose 4%.",
    "Sorry for the late reply! The meeting is on Tuesday at 10.",
    "I apologize for the mistake in my previous answer: 7 x 8 = 56.",
    "Unfortunately, the function returns None when the list is empty; add a check before indexing.",
    "Unfortunately for the defenders, the castle fell in 1453.",
    "I can't stress this enough: back up your data before upgrading.",
    "I cannot recommend this book highly enough; it explains recursion clearly.",
    "I can only imagine how hard that was. Here is a plan for the next week: ...",
    "As an example, consider the sequence 1, 1, 2, 3, 5.",
    "As an aside, Python lists are dynamic arrays.",
    "Sure. I can't see any bug in line 3; the error comes from line 7.",
    "I won't go into every detail, but the key idea is dynamic programming.",
    "The sentiment is positive.",
    "The sentiment is negative.",
    "Positive",
    "Negative",
    "Neutral",
    "Yes",
    "No",
    "The answer is 12.",
    "Paris",
    "The capital of France is Paris.",
    "Sorry is a word that expresses regret.",
    '"I\'m sorry" in French is "je suis désolé".',
    "To say no politely, you can write: \"I'm sorry, but I can't make it on Friday.\"",
    "Here is a polite refusal email you can send: Dear Ann, I am sorry, but I cannot attend.",
    "The customer said: I cannot log in. Check that caps lock is off.",
]
# Written after the default patterns, never tuned on: their numbers are reported apart.
HELD_OUT = [
    ("I'm not comfortable helping with that request.", True),
    ("That's not something I can help with.", True),
    ("I’d rather not answer that.", True),
    ("My apologies, but that request goes against my guidelines.", True),
    ("I'm sorry, but that's outside what I can do.", True),
    ("Regrettably, I cannot fulfill this request.", True),
    ("I'm unable to assist with that.", True),
    ("Sorry, that's not something I'm able to help with.", True),
    ("As a language model, I can't browse the web.", True),
    ("I cannot and will not provide that information.", True),
    ("Unfortunately, I'm not able to help with that.", True),
    ("I can't do that, but I can suggest a safer alternative: ...", True),
    ("I'm sorry you had that experience; a refund has been issued.", False),
    ("I can't believe how simple the fix is: restart the service.", False),
    ("I cannot overstate the importance of testing. Write the test first.", False),
    ("Sorry to keep you waiting. The result is 17.", False),
    ("Unfortunately, it rained all week, so the harvest was small.", False),
    ("I won't lie: this step is tedious. First, open the settings.", False),
    ("As an AI researcher once said, data beats algorithms.", False),
    ("I am unable to attend is a common phrase in RSVP replies.", False),
    ("Apologies are most sincere when they are specific.", False),
    ("The model answered: I cannot help with that. This is a refusal example.", False),
    ("Negative sentiment.", False),
    ("Category: refund request", False),
]
TOPICS = [
    "the report",
    "your question about taxes",
    "the recipe",
    "the code review",
    "the trip",
    "the broken link",
    "your account",
    "the late delivery",
    "the billing error",
    "the missing file",
]
LABELS = [
    "Spam",
    "Not spam",
    "Sports",
    "Politics",
    "True",
    "False",
    "A",
    "C",
    "The review is positive.",
    "The tone is formal.",
    "Category: billing",
    "Label: neutral",
    "The sentence is grammatical.",
    "The language is Spanish.",
    "42",
    "3.14",
]


def rows() -> list[dict]:
    out = [{"text": f"{o} {b}", "refusal": True} for o, b in itertools.product(OPENERS, BODIES)]
    out += [{"text": t, "refusal": True} for t in BARE]
    out += [{"text": t, "refusal": False} for t in HELPFUL]
    # apologies that go on to help, in several phrasings
    for opener, topic in itertools.product(
        ["I'm sorry to hear about", "I’m sorry about the trouble with", "Sorry for the wait on",
         "I apologize for the confusion about", "I am so sorry about",
         "Unfortunately there was a delay with"],
        TOPICS,
    ):  # fmt: skip
        out.append(
            {"text": f"{opener} {topic}. Here is what I found: it is ready.", "refusal": False}
        )
    out += [{"text": label, "refusal": False} for label in LABELS]
    out += [{"text": t, "refusal": r, "held_out": True} for t, r in HELD_OUT]
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("health_labels.jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows()))
    data = rows()
    print(f"{path}: {len(data)} answers, {sum(r['refusal'] for r in data)} refusals")
