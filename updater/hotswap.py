"""Keep a running model on its store's active adapters, swapping in newly promoted versions without a restart.

`refresh()` costs one `stat` of `adapters/active.json` while nothing changed, so an agent can call it before
every answer. A scope other than `global` runs the active global adapter and its own one together (the way
its adapter was trained). A new version of an adapter already loaded is swapped in place (peft's hotswap:
same shapes, no new modules, a compiled model stays compiled); a version with another rank or target
modules is loaded beside it and the old one deleted.
"""
from __future__ import annotations

import os
from pathlib import Path

from engramma.updater.model import LanguageModel
from engramma.updater.registry import ACTIVE_FILE, AdapterError, read_active_pointer

SHARED, OWN = "shared", "own"  # adapter names inside the model: the global adapter, the scope's own


class ActiveAdapters:
    def __init__(self, lm: LanguageModel, store_path: str | os.PathLike, scope: str = "global"):
        self.lm = lm
        self.folder = Path(store_path)
        self.scope = scope
        self.model = lm.model  # becomes a PeftModel once an adapter is loaded
        self.loaded: dict[str, str] = {}  # adapter name -> version
        self._signature: tuple[int, int] | None = None
        self._fingerprint: str | None = None

    @property
    def versions(self) -> dict[str, str]:
        """The versions in use, by train scope."""
        return {("global" if name == SHARED else self.scope): version for name, version in self.loaded.items()}

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.folder / "adapters" / ACTIVE_FILE)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Load what the registry says is active now; True if the model changed."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        pointer = read_active_pointer(self.folder)
        wanted = {SHARED: pointer.get("global")}
        if self.scope != "global":
            wanted[OWN] = pointer.get(self.scope)
        changed = False
        for name, entry in wanted.items():
            if entry is None:
                if name in self.loaded:
                    self.model.delete_adapter(name)
                    del self.loaded[name]
                    changed = True
            elif self.loaded.get(name) != entry["version"]:
                self._load(name, entry)
                changed = True
        if changed and self.loaded:
            names = [n for n in (SHARED, OWN) if n in self.loaded]
            self.model.base_model.set_adapter(names if len(names) > 1 else names[0])
            self.model.eval()
        elif changed:  # no adapter active any more: back to the base model
            self.model = self.model.unload()
        return changed

    def _load(self, name: str, entry: dict) -> None:
        from peft import PeftModel
        from peft.utils.hotswap import hotswap_adapter

        path = self.folder / entry["path"]
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"active adapter {entry['version']} has no folder at {path}")
        if entry.get("base_model_hash"):
            self._fingerprint = self._fingerprint or self.lm.fingerprint
            if entry["base_model_hash"] != self._fingerprint:
                raise AdapterError(f"adapter {entry['version']} was trained on another base model "
                                   f"({entry.get('base_model')}, {entry['base_model_hash']}) than this one "
                                   f"({self.lm.model_id}, {self._fingerprint})")
        device = next(self.lm.model.parameters()).device
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.lm.model, str(path), adapter_name=name)
        elif name in self.loaded:
            self.model.set_adapter(name)  # hotswap works on the one active adapter
            try:
                hotswap_adapter(self.model, str(path), adapter_name=name, torch_device=str(device))
            except (ValueError, RuntimeError):  # another rank or target modules: load it beside, drop the old
                self.model.delete_adapter(name)
                self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.to(device)
        self.loaded[name] = entry["version"]
