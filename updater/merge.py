"""Merge adapter versions into one with peft's `add_weighted_adapter` (ties, dare_ties, linear, svd). The merged
adapter is a candidate like any other: its lineage is the union of its sources', and it passes the same gate.

A merge may not carry an item into a wider scope than the policy allows: sources from different train scopes
make a shared (global) adapter, refused if any source's lineage holds an item that was kept out of shared
weights (personal data, or a train scope of its own).
"""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone

from engramma.memory import items as item_rows
from engramma.memory.store import Store
from engramma.updater import queue, registry
from engramma.updater.model import LanguageModel
from engramma.updater.registry import AdapterConfig, AdapterError

METHODS = ("ties", "dare_ties", "linear", "svd")
MERGE_SEED = 0


def merge(store: Store, lm: LanguageModel, versions: list[str], *, method: str = "ties",
          weights: list[float] | None = None, density: float = 0.5) -> str:
    """Write the merge of `versions` as a new candidate version and return its name."""
    if method not in METHODS:
        raise AdapterError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    if len(versions) < 2 or len(set(versions)) != len(versions):
        raise AdapterError("merge: name two or more different versions")
    weights = weights or [1.0 / len(versions)] * len(versions)
    if len(weights) != len(versions):
        raise AdapterError(f"--weights: {len(weights)} weight(s) for {len(versions)} versions")
    folder = store.folder
    with store.transaction() as con:
        sources = [registry.get(con, folder, v) for v in versions]
        tainted = [s.version for s in sources if s.tainted]
        if tainted:
            raise AdapterError(f"merge refused: {', '.join(tainted)} saw items that were forgotten since (tainted); "
                               "a merge would carry them on")
        bases = {s.base_model_hash for s in sources}
        if len(bases) > 1:
            raise AdapterError(f"merge: the versions were trained on different base models ({sorted(map(str, bases))})")
        scopes = {s.train_scope for s in sources}
        scope = scopes.pop() if len(scopes) == 1 else "global"
        saw = registry.learned_by(con, versions, roles=None)
        if scope == "global":
            scopes_of = queue.queued_scopes(con, saw)
            private = sorted(set(item_rows.with_pii(con, saw)) | {i for i in saw if scopes_of.get(i, 'global') != 'global'})
            if private:
                raise AdapterError(
                    f"merge refused: the lineage of {', '.join(versions)} holds {len(private)} item(s) the policy "
                    f"keeps out of shared weights (e.g. item {private[0]}); a merge would be a shared adapter")
        parent = registry.active(con, folder, scope)
        lineage = dict.fromkeys(saw, "merged")
        stacked = {s.config.stacked_on for s in sources}

    from peft import PeftModel

    lm = lm.bare()  # an agent of this process may be answering with adapters loaded into the same model
    names = [f"m{n}" for n in range(len(sources))]
    model = PeftModel.from_pretrained(lm.model, str(sources[0].path), adapter_name=names[0])
    tmp = folder / "adapters" / f".merge-{os.getpid()}"
    try:
        for name, source in zip(names[1:], sources[1:]):
            model.load_adapter(str(source.path), adapter_name=name)
        extra = {"density": density} if method in ("ties", "dare_ties") else {}
        try:
            import torch

            with torch.random.fork_rng(devices=[]):  # dare_ties drops weights at random: the same merge twice
                torch.manual_seed(MERGE_SEED)        # gives the same adapter, and the caller's RNG does not move
                model.add_weighted_adapter(names, weights, "merged", combination_type=method, **extra)
        except (ValueError, RuntimeError) as e:
            raise AdapterError(f"merge with {method} failed: {e}") from None
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), selected_adapters=["merged"])
    finally:
        model.unload()
    saved = tmp / "merged" if (tmp / "merged").is_dir() else tmp  # peft nests adapters not named "default"
    now = datetime.now(timezone.utc)
    with store.transaction() as con:
        version = registry.next_version(con)
        final = folder / "adapters" / version
        if final.exists():
            shutil.rmtree(final)
        os.replace(saved, final)
        try:
            registry.add(con, version=version, parent=parent.version if parent else None, train_scope=scope,
                         path=f"adapters/{version}", base_model=sources[0].base_model,
                         base_model_hash=sources[0].base_model_hash, policy_hash=sources[0].policy_hash,
                         config=AdapterConfig(merged_from=versions, method=method, weights=weights,
                                              density=extra.get("density"),
                                              stacked_on=stacked.pop() if len(stacked) == 1 else None),
                         items_new=0, items_replayed=0, tokens=0, steps=0, wall_s=0.0, tokens_per_s=0.0,
                         peak_mem_mb=0.0, now=now, lineage=lineage, note=f"merge of {', '.join(versions)} ({method})")
        except BaseException:
            os.replace(final, saved)
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return version
