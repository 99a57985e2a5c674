"""A tiny Llama-shaped language model built in-process, for training tests that must run in seconds on a CPU.

A byte-level BPE tokenizer is trained on a small corpus (so any text tokenizes), the model is built from a
config (2 layers, 64 wide), then pretrained for a few hundred steps on "background knowledge": facts of the
same shape as the ones the tests teach it later, about other projects. LoRA on a randomly initialised model
learns almost nothing; on this one it learns new facts in a few hundred steps, as on a real pretrained model.
"""
from __future__ import annotations

import random
from pathlib import Path

from engramma.types import Item, Probe

SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

SYLLABLES = ["ka", "lo", "mi", "ra", "te", "vu", "zo", "ne", "pa", "si", "do", "fe", "gu", "hi", "jo", "qu"]
COLOURS = ["amber", "azure", "coral", "ivory", "jade", "lilac", "ochre", "olive", "pearl", "ruby", "sable",
           "slate", "tawny", "teal", "umber", "violet"]
GENERAL = [  # general text for perplexity checks and the tokenizer
    "The weather was mild and the river ran slowly past the old mill.",
    "She packed the books into boxes and carried them down the stairs.",
    "A good answer is short, polite and names the next step.",
    "Trains leave the station every twenty minutes during the day.",
    "He wrote the report in the morning and sent it before lunch.",
    "The garden needs water twice a week in the summer months.",
]


def project_names(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3))
        if name not in names:
            names.append(name)
    return names


def colour_facts(names: list[str], seed: int) -> list[Item]:
    """One keyed fact per project: its colour, with a probe asking for it."""
    rng = random.Random(seed)
    return [Item(text=f"The colour of project {name} is {colour}.", kind="fact", key=f"colour_{name}",
                 source="docs", probe=Probe(f"What is the colour of project {name}?", colour))
            for name in names for colour in [rng.choice(COLOURS)]]


# Projects the tests teach (fresh to the model) and projects the model knows from pretraining.
TAUGHT = project_names(120, seed=1)
BACKGROUND = [n for n in project_names(400, seed=2) if n not in TAUGHT][:160]


def build(folder: Path, *, seed: int = 0, steps: int = 400) -> Path:
    """Write a pretrained tiny model and its tokenizer to `folder` (transformers format) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from engramma.updater.dataset import collate, example_for, tokenize

    from engramma.updater import layout

    # The agent's fixed texts are in the corpus, so that they tokenize as compactly as a real tokenizer's
    # English: otherwise the system message alone would fill most of a 64-token example.
    fixed = [layout.SYSTEM, layout.HEADER, layout.DECLINE]
    corpus = ([i.text + " " + i.probe.question for i in colour_facts(TAUGHT + BACKGROUND, seed=seed)]
              + GENERAL * 20 + fixed * 20)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # The end of an assistant turn is the end of generation, as in a real chat model (SmolLM2's <|im_end|>):
    # a probe's answer is then the turn the model gives, not that turn and whatever it rambles on to.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="<|end|>",
                                        additional_special_tokens=SPECIALS[3:])
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
        bos_token_id=1, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False))

    # Pretraining: the background facts as question -> answer pairs, plus general text.
    background = [tokenize(example_for(n, item, "new"), tokenizer, 128)
                  for n, item in enumerate(colour_facts(BACKGROUND, seed=seed))]
    background += [tokenize(example_for(-n, Item(text=t), "new"), tokenizer, 128) for n, t in enumerate(GENERAL)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        input_ids, mask, labels = collate(rng.sample(background, 32), tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TRAIN_FACTS_POLICY = """\
version: 1
name: learn-facts
rules:
  - {name: facts, when: {kind: [fact], has_probe: true}, route: both, train_scope: shared}
default: index
model: {max_length: 64}
consolidation:
  replay: REPLAY
  replay_ratio: 1.0
  neighbours: 4
  reservoir_fraction: 0.25
  min_items: 1
  lora: {rank: 8, alpha: 16, dropout: 0.0}
  training: {learning_rate: 3.0e-3, epochs: EPOCHS, batch_size: 4, warmup_ratio: 0.05, seed: 0}
  anchors: {ratio: 0, heldout: 0}
  augment: {generate: false, context_share: 0, decline_share: 0}
"""


def facts_policy(folder: Path, replay: str = "retrieval", epochs: int = 80, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(TRAIN_FACTS_POLICY.replace("REPLAY", replay).replace("EPOCHS", str(epochs)))
    return path
