"""Training throughput: engramma's LoRA loop vs TRL's SFTTrainer, side by side on the same model, data, peft
config and hardware, each in its own fresh process.

Both train one LoRA (rank 16, alpha 32, dropout 0.05, all linear layers) for the same epochs at batch 8 on the
same prompt/completion pairs (a mix of short facts, corrections and longer demonstrations, in the model's chat
template, loss on the completion only), with a constant learning rate, fp32 on CPU / bf16 on CUDA, and no
gradient checkpointing (TRL's SFTConfig turns it on by default; engramma does not recompute activations, so
it is turned off for TRL too). Throughput is non-padding tokens per second of training: the tokens of the
tokenized examples times the epochs, over the time from the first optimizer step to the end of training
(model loading, dataset preparation and trainer set-up excluded for both; TRL is timed by a callback). TRL
runs twice: random order, each batch padded to its longest example (its default), and with
`train_sampling_strategy="group_by_length"`, its own answer to padding. Runs alternate between the systems,
each in a fresh process, `--repeats` times; medians are reported.

On a GPU, `--model random-llama-0.5b` builds a Llama-shaped model of about 0.5B parameters from a config
(random weights: throughput does not depend on them) in bf16, and the script reports MFU: achieved FLOP/s
over the bf16 matrix-multiply peak it measures on that GPU. LoRA training costs about 4 FLOPs per frozen
parameter per token (forward 2, input gradients 2; frozen weights get no weight gradient), plus attention.

    python benchmarks/bench_train.py --examples 256 --epochs 1            # CPU, SmolLM2-135M-Instruct
    python benchmarks/bench_train.py --model random-llama-0.5b --examples 2048 --epochs 1   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets sys.path and HF_HUB_OFFLINE)
from common import environment, in_fresh_process, table

SYSTEMS = ("engramma", "trl", "trl-grouped")
RANK, ALPHA, DROPOUT, LR, BATCH = 16, 32, 0.05, 2e-4, 8


def pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Prompt/completion pairs of mixed lengths, as a support agent's queue would hold."""
    rng = random.Random(seed)
    products = ["router", "kettle", "headset", "printer", "thermostat", "camera", "laptop", "scooter"]
    steps = ["unplug it for ten seconds", "hold the reset button", "update the firmware", "check the cable",
             "sign out and back in", "clear the cache", "try another outlet", "contact the courier"]
    out = []
    for k in range(n):
        product = rng.choice(products)
        kind = k % 3
        if kind == 0:
            out.append((f"What is the warranty on the {product}?",
                        f"The {product} has a {rng.choice([1, 2, 3])}-year warranty."))
        elif kind == 1:
            out.append((f"How should you answer a question about a broken {product}?",
                        f"Apologise once, then give the steps: {', '.join(rng.sample(steps, 3))}."))
        else:
            said = " ".join(rng.sample(steps, rng.randint(2, 6)))
            out.append((f"A customer writes: my {product} stopped working after I tried to {said}. What now?",
                        "I am sorry about the trouble. " + " Then ".join(
                            s.capitalize() + "." for s in rng.sample(steps, rng.randint(2, 7)))))
    return out


def load(model_name: str, device: str):
    import torch

    from engramma.updater import LanguageModel, load_model

    if model_name != "random-llama-0.5b":
        return load_model(model_name, device=device)
    from transformers import LlamaConfig, LlamaForCausalLM

    base = load_model("smollm2-135m-instruct", device="cpu")  # its tokenizer and chat template
    config = LlamaConfig(vocab_size=len(base.tokenizer), hidden_size=1024, intermediate_size=4096,
                         num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                         max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    return LanguageModel(model, base.tokenizer, "random-llama-0.5b")


def run_engramma(model_name: str, n: int, epochs: int, device: str) -> dict:
    from engramma.policies.schema import ConsolidationSettings
    from engramma.updater.dataset import Example, tokenize
    from engramma.updater.train import train_adapter

    lm = load(model_name, device)
    examples = [tokenize(Example(k, "new", p, c), lm.tokenizer, 512) for k, (p, c) in enumerate(pairs(n))]
    settings = ConsolidationSettings.model_validate({
        "lora": {"rank": RANK, "alpha": ALPHA, "dropout": DROPOUT},
        "training": {"learning_rate": LR, "epochs": epochs, "batch_size": BATCH, "warmup_ratio": 0.0}})
    with tempfile.TemporaryDirectory() as out:
        report = train_adapter(lm, examples, settings, Path(out) / "adapter", progress=False)
    params = sum(p.numel() for p in lm.model.parameters())
    return {"system": "engramma", "tokens": report.tokens, "label_tokens": report.label_tokens,
            "wall_s": report.wall_s, "tokens_per_s": report.tokens / report.wall_s,
            "padding_waste": report.padding_waste, "steps": report.steps,
            "mean_loss": sum(report.losses) / len(report.losses),
            "params": params, "peak_mem_mb": report.peak_mem_mb}


def run_trl(model_name: str, n: int, epochs: int, device: str, grouped: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        """From the first optimizer step's start to the end of training, as engramma's own report times it."""
        start = end = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.start is None:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self.end = time.perf_counter()

    lm = load(model_name, device)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                               "completion": [{"role": "assistant", "content": c}]} for p, c in pairs(n)])
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=epochs, learning_rate=LR,
            lr_scheduler_type="constant", warmup_steps=0, max_length=512, logging_steps=10**6, save_strategy="no",
            report_to=[], seed=0, bf16=device.startswith("cuda"), use_cpu=not device.startswith("cuda"),
            gradient_checkpointing=False, use_liger_kernel=False, dataloader_num_workers=0,
            **({"train_sampling_strategy": "group_by_length"} if grouped else {}))
        trainer = SFTTrainer(model=lm.model, args=config, train_dataset=data, processing_class=lm.tokenizer,
                             peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"),
                             callbacks=[clock])
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * epochs
        label_tokens = sum(sum(m) for m in trainer.train_dataset["completion_mask"]) * epochs \
            if "completion_mask" in trainer.train_dataset.column_names else None
        result = trainer.train()
    wall = clock.end - clock.start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"system": "trl-grouped" if grouped else "trl", "tokens": tokens, "label_tokens": label_tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall, "steps": result.global_step,
            "mean_loss": result.training_loss, "peak_mem_mb": peak}  # training_loss: the mean of its per-step losses


def matmul_peak_tflops(device: str) -> float:
    """The best bf16 matmul throughput measured here (8192^3, a few sizes): the MFU denominator."""
    import torch

    best = 0.0
    for size in (4096, 8192, 12288):
        a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        start = time.perf_counter()
        reps = 20
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start) / 1e12)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each system, alternating; medians reported")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        system = args.child[0]
        out = (run_engramma(args.model, args.examples, args.epochs, device) if system == "engramma"
               else run_trl(args.model, args.examples, args.epochs, device, grouped=system == "trl-grouped"))
        print(json.dumps(out))
        return

    print(environment(), f"device {device}", flush=True)
    runs = []
    for repeat in range(args.repeats):
        for system in args.systems:  # alternating, so that a noisy minute on a shared machine hits each system
            out = in_fresh_process(__file__, [system, f"--model={args.model}", f"--examples={args.examples}",
                                              f"--epochs={args.epochs}", f"--device={device}"])
            runs.append({**out, "repeat": repeat})
            print(json.dumps(runs[-1]), flush=True)
    ok = [r for r in runs if "error" not in r]
    by: dict[str, dict] = {}
    for system in args.systems:
        mine = sorted((r for r in ok if r["system"] == system), key=lambda r: r["tokens_per_s"])
        if mine:
            by[system] = {**mine[len(mine) // 2], "all_tokens_per_s": [r["tokens_per_s"] for r in mine]}
    print()
    print(table(["system", "tokens", "completion tokens", "steps", "median tokens/s", "all runs tokens/s",
                 "mean loss per step"],
                [[r["system"], r["tokens"], r.get("label_tokens") or "-", r["steps"], r["tokens_per_s"],
                  " / ".join(f"{v:,.0f}" for v in r["all_tokens_per_s"]), r["mean_loss"]] for r in by.values()]))
    for other in ("trl", "trl-grouped"):
        if "engramma" in by and other in by:
            print(f"engramma / {other}: {by['engramma']['tokens_per_s'] / by[other]['tokens_per_s']:.2f}x tokens/s")
    result = {"environment": environment(), "device": device, "model": args.model, "runs": runs, "medians": by}
    if device.startswith("cuda") and "engramma" in by:
        peak = matmul_peak_tflops(device)
        achieved = 4 * by["engramma"]["params"] * by["engramma"]["tokens_per_s"] / 1e12
        result.update(peak_tflops=peak, achieved_tflops=achieved, mfu=achieved / peak)
        # 4 FLOPs per parameter per token counts the LM head on every token (engramma computes logits only
        # from the first completion position: an overstatement) and no attention FLOPs (an understatement).
        print(f"bf16 matmul peak {peak:.0f} TFLOP/s, achieved {achieved:.1f} TFLOP/s (4 FLOPs/param/token), "
              f"MFU {achieved / peak:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
