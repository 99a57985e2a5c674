"""The LoRA training loop: one adapter trained on a ready list of tokenized examples.

Plain PyTorch under `accelerate` (one process, or DDP when started by `accelerate launch`), so the same loop
runs on a laptop CPU, one GPU or many. What it promises:
- loss on completion tokens only, averaged over every completion token of an optimizer step (all
  micro-batches and all processes), so the update does not depend on how a step is split;
- length-bucketed batches (little padding), logits computed only from the first completion position on;
- AdamW with constant-with-warmup or warmup-stable-decay: no cosine restart between rounds;
- bf16 autocast on CUDA, fp32 on CPU; gradient accumulation and clipping; optional KL to the parent
  adapter on replayed examples, and to the base model on anchors;
- seeded and deterministic; a checkpoint after every epoch (adapter, optimizer moments, RNG), from which a
  killed run resumes to the same result. Checkpoints are safetensors and JSON: no pickle.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engramma.errors import EngrammaError
from engramma.policies.schema import ConsolidationSettings
from engramma.updater.dataset import IGNORE, ExampleRole, TokenizedExample, collate, length_batches
from engramma.updater.model import LanguageModel

TRAINED = "default"  # peft saves the adapter named "default" at the top of its folder
STACKED = "stacked"  # the shared adapter a scope's adapter is trained on top of, frozen
PARENT = "parent"  # the parent adapter, frozen, for the KL term


class BudgetExceeded(EngrammaError):
    """Training was stopped at its wall-clock deadline, between two optimizer steps; nothing was saved."""


@dataclass(frozen=True, slots=True)
class TrainReport:
    epochs: int
    steps: int
    tokens: int  # non-padding tokens processed, all epochs and processes
    label_tokens: int
    padding_waste: float  # share of computed positions that were padding
    wall_s: float
    tokens_per_s: float
    peak_mem_mb: float  # CUDA: peak allocated; CPU: peak resident memory of the process while training
    losses: tuple[float, ...] = field(repr=False)  # mean completion-token loss of each optimizer step
    resumed_from_epoch: int | None = None
    processes: int = 1  # data-parallel processes that trained it together


def make_accelerator():
    """One process, or DDP under `accelerate launch`. Without CUDA, `cpu=True` is what makes accelerate join
    the processes (`--multi_gpu` on a CPU machine otherwise leaves each one alone, unaware of the others)."""
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def lr_factor(schedule: str, step: int, total: int, warmup: int, decay_ratio: float = 0.2) -> float:
    """Multiplier of the learning rate at `step` (0-based). Warmup is linear; warmup_stable_decay then holds and
    decays linearly to zero over the last `decay_ratio` of the steps. Every round starts its own schedule."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "warmup_stable_decay":
        decay_start = max(warmup, math.floor(total * (1 - decay_ratio)))
        if step >= decay_start:
            return max(0.0, (total - step) / max(1, total - decay_start))
    return 1.0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_mb() -> float:
    """This process's resident memory now (Linux /proc), else its lifetime peak (ru_maxrss, KiB on Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peft_model(lm: LanguageModel, settings: ConsolidationSettings, *, parent: Path | None, stacked: Path | None,
               kl: bool):
    """The base model with the adapter to train: a copy of `parent` to continue, or a new LoRA; `stacked`
    (the shared adapter under a scope's own) and, for the KL term, `parent` are loaded frozen beside it."""
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = settings.lora
    if parent is not None:
        model = PeftModel.from_pretrained(lm.model, str(parent), adapter_name=TRAINED, is_trainable=True)
    else:
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(lm.model, config, adapter_name=TRAINED)
    if stacked is not None:
        model.load_adapter(str(stacked), adapter_name=STACKED, is_trainable=False)
    if kl and parent is not None:
        model.load_adapter(str(parent), adapter_name=PARENT, is_trainable=False)
    activate(model, [STACKED, TRAINED] if stacked is not None else [TRAINED])
    return model


def activate(model, names: list[str], trainable: str | None = TRAINED) -> None:
    """Make `names` the adapters in the forward pass; only `trainable` keeps gradients."""
    model.base_model.set_adapter(names if len(names) > 1 else names[0])
    frozen = [name for name in model.peft_config if name != trainable]
    if frozen:
        model.base_model.set_requires_grad(frozen, requires_grad=False)
    if trainable is not None:
        model.base_model.set_requires_grad([trainable], requires_grad=True)


def _takes_logits_to_keep(model) -> bool:
    """Whether the causal LM under the DDP and peft wrappers (which pass any keyword on) accepts
    `logits_to_keep`; asked of its signature, so that a TypeError raised inside the model is never hidden."""
    import inspect

    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def completion_losses(model, input_ids, attention_mask, labels):
    """(sum of completion-token losses per row, completion tokens per row, logits over kept positions).
    Logits are computed only from the first position any row predicts a completion token from."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    has_label = (targets != IGNORE).any(dim=0)
    first = int(has_label.nonzero()[0]) if has_label.any() else targets.shape[1] - 1
    keep = input_ids.shape[1] - first  # positions first .. end; the last predicts nothing and is dropped
    if _takes_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    else:  # an architecture without it computes every position's logits
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -keep:]
    logits = logits[:, :-1].float()  # (batch, keep-1, vocab): predictions of targets[:, first:]
    targets = targets[:, first:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="none").view(targets.shape)
    counted = (targets != IGNORE)
    return (loss * counted).sum(dim=1), counted.sum(dim=1), logits, counted


def _save_optimizer(optimizer, params, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for n, p in enumerate(params):
        state = optimizer.state.get(p, {})
        for name, value in state.items():
            tensors[f"{n}.{name}"] = value.detach().cpu().reshape(-1) if value.dim() == 0 else value.detach().cpu()
    save_file(tensors, str(path))


def _load_optimizer(optimizer, params, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for n, p in enumerate(params):
        state = {name.split(".", 1)[1]: value for name, value in tensors.items() if name.split(".", 1)[0] == str(n)}
        if state:
            if "step" in state:
                state["step"] = state["step"].reshape(())
            optimizer.state[p] = {k: v.to(p.device) for k, v in state.items()}


def _rng_tensors():
    import torch

    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


STATE_SCHEMA = 1  # epoch-N/state.json


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest whole checkpoint this engramma can resume from (one of another schema is trained again)."""
    done = sorted(p for p in folder.glob("epoch-*") if (p / "state.json").is_file())
    if done and json.loads((done[-1] / "state.json").read_text()).get("schema") == STATE_SCHEMA:
        return done[-1]
    return None


def train_adapter(
    lm: LanguageModel,
    examples: list[TokenizedExample],
    settings: ConsolidationSettings,
    out_dir: Path,
    *,
    parent: Path | None = None,
    stacked: Path | None = None,
    checkpoints: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    heartbeat: Callable[[], None] | None = None,
    accelerator=None,
    deadline: float | None = None,
) -> TrainReport:
    """Train a LoRA adapter on `examples` and save it (peft format, safetensors) to `out_dir`.

    `parent`: the adapter folder to continue from (None: a new adapter). `stacked`: an adapter kept frozen
    underneath. `checkpoints`: a folder for per-epoch checkpoints; with `resume`, training continues after the
    latest one. `deadline` (a `time.monotonic()` value): stop with `BudgetExceeded` at the first optimizer step
    that ends past it. The base model is left as it was found (the adapter is unloaded before returning).
    """
    import torch
    from peft import load_peft_weights, set_peft_model_state_dict

    if not examples:
        raise ValueError("no examples to train on")
    training = settings.training
    accelerator = accelerator or make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(training.seed + rank)
    use_kl = training.kl_weight > 0 and parent is not None and any(e.role == ExampleRole.REPLAY for e in examples)
    anchor_kl = settings.anchors.kl_weight if any(e.role == ExampleRole.ANCHOR for e in examples) else 0.0
    model = peft_model(lm, settings, parent=parent, stacked=stacked, kl=use_kl)
    try:
        device = accelerator.device
        model.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        peak_rss = _resident_mb()
        params = [p for p in model.parameters() if p.requires_grad]
        raw_optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=0.0)
        global_batch = training.batch_size * training.gradient_accumulation
        per_epoch = math.ceil(len(examples) / global_batch)
        total_steps = per_epoch * training.epochs
        warmup = round(training.warmup_ratio * total_steps)
        ddp_model, optimizer = accelerator.prepare(model, raw_optimizer)

        start_epoch, step, losses, tokens, label_tokens, resumed = 0, 0, [], 0, 0, None
        if resume and checkpoints is not None and (latest := _latest_checkpoint(checkpoints)) is not None:
            from safetensors.torch import load_file

            state = json.loads((latest / "state.json").read_text())
            set_peft_model_state_dict(model, load_peft_weights(str(latest / "adapter"), device=str(device)),
                                      adapter_name=TRAINED)
            _load_optimizer(raw_optimizer, params, latest / "optimizer.safetensors")
            rng = load_file(str(latest / f"rng-{rank}.safetensors"))
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
            start_epoch, step, losses = state["epoch"] + 1, state["step"], state["losses"]
            tokens, label_tokens, resumed = state["tokens"], state["label_tokens"], state["epoch"]
        done = step  # the schedule goes on from the step a resumed run stopped at
        schedule = torch.optim.lr_scheduler.LambdaLR(
            raw_optimizer, lambda n: lr_factor(training.schedule, done + n, total_steps, warmup))

        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        epoch_batches = [length_batches(examples, global_batch, seed=training.seed, epoch=e)
                         for e in range(training.epochs)]
        bar = _progress(progress and accelerator.is_main_process, total_steps, step)
        started = time.perf_counter()
        run_tokens = run_positions = 0  # this process's real tokens, and positions computed (padding too)

        def total(count: int) -> int:  # summed over processes (a collective: every process calls it)
            if world == 1:
                return count
            return int(accelerator.reduce(torch.tensor(count, device=device), reduction="sum"))
        ddp_model.train()
        for epoch in range(start_epoch, training.epochs):
            for batch in epoch_batches[epoch]:
                # The step's examples, split into micro-batches, each split across processes.
                micro = [batch[start:start + training.batch_size]
                         for start in range(0, len(batch), training.batch_size)]
                step_label_tokens = sum(examples[n].label_tokens for n in batch)
                step_loss = torch.zeros((), device=device)
                for m, rows in enumerate(micro):
                    mine = rows[rank::world]
                    last = m == len(micro) - 1
                    # Fewer examples than processes in this micro-batch: a process without one still runs
                    # forward and backward (DDP needs every process in each reduction), with weight 0.
                    weight = 1.0 if mine else 0.0
                    part = [examples[n] for n in (mine or rows[:1])]
                    sync = accelerator.no_sync(ddp_model) if not last and world > 1 else contextlib.nullcontext()
                    with sync:
                        input_ids, mask, labels = (t.to(device) for t in collate(part, lm.tokenizer.pad_token_id))
                        with autocast:
                            loss_sum, _, logits, counted = completion_losses(ddp_model, input_ids, mask, labels)
                            loss = loss_sum.sum()
                            if use_kl:
                                loss = loss + training.kl_weight * _kl_to_reference(
                                    model, input_ids, mask, logits, counted, part, "replay", PARENT,
                                    stacked is not None)
                            if anchor_kl:
                                loss = loss + anchor_kl * _kl_to_reference(
                                    model, input_ids, mask, logits, counted, part, ExampleRole.ANCHOR, None,
                                    stacked is not None)
                        # DDP averages gradients over processes: scale so the step's gradient is that of the
                        # mean loss over all of the step's completion tokens.
                        accelerator.backward(loss * (weight * world / step_label_tokens))
                    step_loss += loss_sum.sum().detach() * weight
                    run_tokens += int(mask.sum()) * int(weight)
                    run_positions += mask.numel() * int(weight)
                accelerator.clip_grad_norm_(params, training.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                total_loss = accelerator.reduce(step_loss, reduction="sum") if world > 1 else step_loss
                losses.append(float(total_loss) / step_label_tokens)
                label_tokens += step_label_tokens
                if heartbeat is not None:
                    heartbeat()
                if device.type != "cuda":
                    peak_rss = max(peak_rss, _resident_mb())
                bar.update(losses[-1], run_tokens * world / max(1e-9, time.perf_counter() - started))
                if deadline is not None and _past(deadline, accelerator, device):
                    raise BudgetExceeded(f"stopped after {step} of {total_steps} steps: the wall-clock budget ran out")
            if checkpoints is not None and epoch < training.epochs - 1:
                _checkpoint(accelerator, model, raw_optimizer, params, checkpoints, epoch=epoch, step=step, losses=losses,
                            tokens=tokens + total(run_tokens), label_tokens=label_tokens)
        bar.close()
        wall = time.perf_counter() - started
        run_tokens, run_positions = total(run_tokens), total(run_positions)
        tokens += run_tokens
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_adapter(model, out_dir)
        accelerator.wait_for_everyone()
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss
        return TrainReport(epochs=training.epochs, steps=step, tokens=tokens, label_tokens=label_tokens,
                           padding_waste=1 - run_tokens / max(1, run_positions), wall_s=wall,
                           tokens_per_s=run_tokens / max(wall, 1e-9), peak_mem_mb=peak, losses=tuple(losses),
                           resumed_from_epoch=resumed, processes=world)
    finally:
        model.unload()  # the base model goes back to its original modules, ready for the next round


def _past(deadline: float, accelerator, device) -> bool:
    """Whether the deadline has passed, agreed by every process (else one would stop and the others hang)."""
    late = time.monotonic() > deadline
    if accelerator.num_processes == 1:
        return late
    import torch

    return bool(accelerator.reduce(torch.tensor(float(late), device=device), reduction="sum") > 0)


def _kl_to_reference(model, input_ids, mask, logits, counted, part, role: ExampleRole, reference: str | None,
                     stacked: bool):
    """KL(reference || current) on the completion tokens of the batch's examples of `role`. The reference is
    the frozen `reference` adapter (the parent), or with None the base model (under the shared adapter, if
    any): what replayed items and anchors are held to."""
    import torch
    import torch.nn.functional as F

    rows = torch.tensor([e.role == role for e in part], device=input_ids.device)
    if not rows.any():
        return logits.sum() * 0.0
    keep = logits.shape[1] + 1
    names = ([STACKED] if stacked else []) + ([reference] if reference else [])
    with torch.no_grad():
        try:
            if names:
                activate(model, names, trainable=None)
                context = contextlib.nullcontext()
            else:
                context = model.disable_adapter()
            with context:
                reference_logits = model(input_ids=input_ids, attention_mask=mask,
                                         logits_to_keep=keep).logits[:, :-1].float()
        finally:
            activate(model, [STACKED, TRAINED] if stacked else [TRAINED])
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(reference_logits, -1), log_target=True,
                  reduction="none").sum(-1)
    return (kl * (counted & rows[:, None])).sum()


def _checkpoint(accelerator, model, optimizer, params, folder: Path, *, epoch: int, step: int, losses: list[float],
                tokens: int, label_tokens: int) -> None:
    """Write epoch-N/ atomically: adapter, optimizer moments, each process's RNG state, then state.json."""
    from safetensors.torch import save_file

    target = folder / f"epoch-{epoch:03d}"
    tmp = folder / f".epoch-{epoch:03d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_file(_rng_tensors(), str(tmp / f"rng-{accelerator.process_index}.safetensors"))
    if accelerator.is_main_process:
        model.save_pretrained(str(tmp / "adapter"), selected_adapters=[TRAINED])
        _save_optimizer(optimizer, params, tmp / "optimizer.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"schema": STATE_SCHEMA, "epoch": epoch, "step": step,
                                                    "losses": losses, "tokens": tokens,
                                                    "label_tokens": label_tokens}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        for older in folder.glob("epoch-*"):  # keep the newest only: it is all a resume needs
            if older != target:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_adapter(model, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), selected_adapters=[TRAINED])


class _progress:
    """A progress bar with loss and tokens/s on stderr, shown only on a terminal (or nowhere)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:,.0f} tok/s"),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), rate=0.0)
            self.bar.start()

    def update(self, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=loss, rate=rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def interference(lm: LanguageModel, settings: ConsolidationSettings, *, parent: Path | None, stacked: Path | None,
                 new: list[TokenizedExample], candidates: list[TokenizedExample]) -> list[float]:
    """For MIR replay: how much each candidate's mean completion loss rises after one virtual SGD step on the
    new examples, starting from the parent adapter. The step is thrown away with the model copy's adapter."""
    import torch

    # A fresh adapter (no parent) starts from a random A matrix, and the step's direction follows it: seeded,
    # so that the same pool gets the same scores, without moving the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.training.seed)
        model = peft_model(lm, settings, parent=parent, stacked=stacked, kl=False)
    try:
        device = next(lm.model.parameters()).device
        model.to(device)
        pad = lm.tokenizer.pad_token_id

        def losses() -> list[float]:
            out = []
            with torch.no_grad():
                for start in range(0, len(candidates), settings.training.batch_size):
                    ids, mask, labels = (t.to(device) for t in collate(candidates[start:start + settings.training.batch_size], pad))
                    loss_sum, counted, _, _ = completion_losses(model, ids, mask, labels)
                    out.extend((loss_sum / counted.clamp(min=1)).tolist())
            return out

        model.eval()  # no dropout: the difference must come from the step alone
        before = losses()
        params = [p for p in model.parameters() if p.requires_grad]
        label_tokens = sum(e.label_tokens for e in new)
        for start in range(0, len(new), settings.training.batch_size):
            ids, mask, labels = (t.to(device) for t in collate(new[start:start + settings.training.batch_size], pad))
            loss_sum, _, _, _ = completion_losses(model, ids, mask, labels)
            (loss_sum.sum() / label_tokens).backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= settings.training.learning_rate * p.grad
        after = losses()
        return [a - b for a, b in zip(after, before)]
    finally:
        model.unload()
