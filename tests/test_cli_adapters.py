"""`engramma consolidate`, `adapters ...`, `audit` and `report` as a user runs them."""
import json

import tiny_lm

from test_cli import assert_clean_error, engramma


def test_consolidate_then_list_show_promote_rollback_audit_and_report(tmp_path, tiny_model_path):
    store = tmp_path / "store"
    policy = tiny_lm.facts_policy(tmp_path, epochs=30)
    policy.write_text(policy.read_text() + "gate: {max_perplexity_increase: 2.0}\n")  # tiny model: see test_gate.GATE
    assert engramma("init", store, "--policy", policy).returncode == 0
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f.to_dict()) for f in tiny_lm.colour_facts(tiny_lm.TAUGHT[:6], seed=0)))
    assert engramma("ingest", store, facts).returncode == 0

    assert_clean_error(engramma("consolidate", store, "--model", tmp_path / "missing-model"),
                       "could not be loaded offline")
    done = engramma("consolidate", store, "--model", tiny_model_path, "--no-gate", "--json")
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert (result["version"], result["status"], result["items_new"]) == ("v1", "trained", 6)
    assert result["tokens"] > 0 and result["tokens_per_s"] > 0 and 0 <= result["padding_waste"] < 0.1
    again = engramma("consolidate", store, "--model", tiny_model_path)
    assert again.returncode == 0 and "nothing to consolidate" in again.stdout

    listed = engramma("adapters", "list", store)
    assert listed.returncode == 0 and "v1\tglobal\tcandidate" in listed.stdout
    shown = json.loads(engramma("adapters", "show", store, "v1", "--json").stdout)
    assert shown["lineage"] == {"new": 6} and shown["items_new"] == 6 and shown["base_model_hash"]
    # Never gated (--no-gate): promoting it measures it first, on the base model it was trained on.
    promoted = engramma("adapters", "promote", store, "v1")
    assert promoted.returncode == 0, promoted.stderr
    assert "pass  new_accuracy" in promoted.stdout and "v1 passed the gate and is now the active adapter of global" \
        in promoted.stdout
    assert json.loads(engramma("adapters", "list", store, "--json").stdout)[0]["status"] == "active"
    assert_clean_error(engramma("adapters", "promote", store, "v1"), "already the active adapter")
    assert_clean_error(engramma("adapters", "show", store, "v9"), "no adapter 'v9'", "the versions are v1")
    assert_clean_error(engramma("adapters", "reject", store, "v1"), "only a candidate can be rejected")

    more = tmp_path / "more.jsonl"
    more.write_text("\n".join(json.dumps(f.to_dict()) for f in tiny_lm.colour_facts(tiny_lm.TAUGHT[6:12], seed=0)))
    engramma("ingest", store, more)
    gated = engramma("consolidate", store, "--model", tiny_model_path)
    assert gated.returncode == 0, gated.stderr
    assert "pass  new_accuracy" in gated.stdout and "v2 promoted" in gated.stdout, gated.stdout

    rolled = engramma("adapters", "rollback", store)
    assert rolled.returncode == 0 and "v2 retired; v1 is active again" in rolled.stdout
    audit = json.loads(engramma("audit", store, "1", "--json").stdout)
    assert [(a["version"], a["role"], a["status"]) for a in audit["adapters"]] == [
        ("v1", "new", "active"), ("v2", "replay", "retired")]
    assert_clean_error(engramma("audit", store, "999"), "no item 999")

    last = tmp_path / "last.jsonl"
    last.write_text("\n".join(json.dumps(f.to_dict()) for f in tiny_lm.colour_facts(tiny_lm.TAUGHT[12:15], seed=0)))
    engramma("ingest", store, last)
    assert engramma("consolidate", store, "--model", tiny_model_path, "--no-gate").returncode == 0
    rejected = engramma("adapters", "reject", store, "v3", "--reason", "not this week")
    assert rejected.returncode == 0 and "v3 rejected (not this week)" in rejected.stdout
    assert_clean_error(engramma("adapters", "promote", store, "v3"), "needs --reason")
    merged = engramma("adapters", "merge", store, "v1", "v2", "--method", "linear", "--model", tiny_model_path)
    assert merged.returncode == 0, merged.stderr
    assert "merged v1, v2 (linear) into v4" in merged.stdout and "pass  items: 12 merged item(s)" in merged.stdout
    assert_clean_error(engramma("adapters", "merge", store, "v1", "--model", tiny_model_path), "two or more")
    report = engramma("report", store, "--out", tmp_path / "report")
    assert report.returncode == 0 and (tmp_path / "report" / "index.html").is_file()


def test_consolidate_needs_a_store(tmp_path):
    assert_clean_error(engramma("consolidate", tmp_path / "nowhere"), "no engramma store here")
    assert_clean_error(engramma("adapters", "list", tmp_path / "nowhere"), "no engramma store here")
    assert_clean_error(engramma("audit", tmp_path / "nowhere", "1"), "no engramma store here")
