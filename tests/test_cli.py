"""The CLI as a user runs it: a real process, real exit codes, one clean line for mistakes."""
import json
import os
import subprocess
import sys

import pytest

from engramma.cli import app

COMMANDS = sorted([command.name or command.callback.__name__ for command in app.registered_commands]
                  + [f"{g.name} {c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands])
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def engramma(*args, input=None):
    return subprocess.run([sys.executable, "-m", "engramma.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, input=input, timeout=300)


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engramma: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_commands_the_issue_names_exist():
    assert set(COMMANDS) >= {"init", "ingest", "observe", "recall", "forget", "stats", "rebuild-index"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = engramma(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_store_lifecycle(tmp_path):
    store = tmp_path / "store"
    assert engramma("init", store).returncode == 0
    assert_clean_error(engramma("init", store), "already exists")

    out = engramma("observe", store, "--text", "Refunds are accepted within 30 days.", "--key", "refund",
                   "--meta", '{"page": 3}', "--json")
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["route"] == "index"

    lines = [
        json.dumps({"text": "Bob drinks green tea every morning.", "scope": "user:bob"}),
        "{not json",
        json.dumps({"text": "Alice is vegetarian.", "scope": "users:alice"}),
        "",
        json.dumps({"text": "Alice is vegetarian.", "scope": "user:alice", "kind": "preference"}),
        json.dumps({"txt": "typo in the field name"}),
    ]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = engramma("ingest", store, data)
    assert out.returncode == 1  # some lines were bad; the rest went in
    assert "ingested 2 items (index: 2)" in out.stdout
    assert f"{data}:2: skipped: not valid JSON" in out.stderr
    assert f"{data}:3: skipped: scope: 'users:alice'" in out.stderr
    assert f"{data}:6: skipped: txt: unknown field" in out.stderr

    hits = json.loads(engramma("recall", store, "what does bob drink", "--scope", "user:bob", "-k", "1",
                               "--json").stdout)
    assert hits[0]["text"] == "Bob drinks green tea every morning."
    hidden = json.loads(engramma("recall", store, "what does bob drink", "--scope", "user:alice", "--json").stdout)
    assert all(hit["scope"] != "user:bob" for hit in hidden)

    stats = json.loads(engramma("stats", store, "--json").stdout)
    assert stats["items"] == 3 and stats["by_scope"] == {"global": 1, "user:alice": 1, "user:bob": 1}

    assert engramma("forget", store, "--scope", "user:bob").stdout.strip() == "forgot 1 item"
    assert_clean_error(engramma("forget", store, first["id"] + 100), "no item")
    assert_clean_error(engramma("get", store, hits[0]["id"]), "no item")
    got = json.loads(engramma("get", store, first["id"], "--json").stdout)
    assert got["meta"] == {"page": 3} and got["key"] == "refund"

    (store / "index" / "checkpoint.bin").write_bytes(b"garbage")
    out = engramma("rebuild-index", store)
    assert out.returncode == 0 and "rebuilt the index: 2 vectors" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["recall", "{missing}", "anything"], "no engramma store here"),
    (["observe", "{store}", "--text", "x", "--kind", "fcat"], "kind: 'fcat' is not one of fact"),
    (["observe", "{store}", "--text", "   "], "text: must be a non-empty string"),
    (["observe", "{store}", "--text", "x", "--meta", "[oops"], "meta: not valid JSON"),
    (["observe", "{store}", "--text", "x", "--scope", "user:"], "scope: 'user:' is not a scope"),
    (["forget", "{store}"], "give an item id or --scope"),
    (["ingest", "{store}", "{missing}"], "no such file"),
    (["recall", "{store}", "anything", "-k", "0"], "Invalid value for '-k'"),
    (["forget", "{store}", "abc"], "Invalid value for 'item_id'"),
    (["recal", "{store}", "anything"], "No such command 'recal'"),
    (["recall", "--scope", "user:bob"], "Missing argument 'store'"),
    (["init", "/proc/no-store-can-live-here"], "/proc/no-store-can-live-here"),
    (["init", "{store}", "--embedder", "nobody/no-such-model"], "could not be loaded offline"),
])
def test_user_mistakes_are_one_line(tmp_path, args, fragment):
    store, missing = tmp_path / "store", tmp_path / "nothing-here"
    result = engramma(*[a.format(store=store, missing=missing) for a in args])
    assert_clean_error(result, fragment)


def test_init_with_an_unloadable_embedder_leaves_no_half_made_store(tmp_path):
    store = tmp_path / "store"
    assert_clean_error(engramma("init", store, "--embedder", tmp_path / "no-such-model"), "could not be loaded")
    assert not store.exists() or not any(store.iterdir())
    assert engramma("init", store).returncode == 0  # the folder is still usable


def test_policy_commands(tmp_path):
    store = tmp_path / "store"
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nname: team\ndefault: index\nrules:\n"
                      "  - {name: corrections, when: {kind: [correction]}, route: both}\n")
    out = engramma("policy", "check", policy)
    assert out.returncode == 0 and "ok (policy 'team', 1 rules, default index" in out.stdout
    assert engramma("init", store, "--policy", "preset:index-only").returncode == 0
    assert "policy: preset:index-only" in engramma("stats", store).stdout
    assert engramma("policy", "set", store, policy).returncode == 0
    assert f"policy: {policy}" in engramma("stats", store).stdout
    record = json.loads(engramma("observe", store, "--text", "Say 'kind regards'.", "--kind", "correction",
                                 "--json").stdout)
    assert record["route"] == "both" and record["rule"] == "corrections"
    explained = json.loads(engramma("policy", "explain", store, record["id"], "--json").stdout)
    assert explained["rules"] == [{"rule": "corrections", "matched": True,
                                   "why": ["kind correction (in [correction])"]}]
    assert explained["policy"]["name"] == "team" and explained["signals"]["novelty"] == 1.0
    text = engramma("policy", "explain", store, record["id"]).stdout
    assert "route: both by rule 'corrections' of policy team" in text
    chat = json.loads(engramma("observe", store, "--text", "hello there", "--kind", "conversation", "--json").stdout)
    text = engramma("policy", "explain", store, chat["id"]).stdout
    assert "      no  corrections: kind conversation, needs in [correction]" in text
    assert "no rule matched: the default route applied" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: team\nrules:\n  - {name: r, when: {kind: [fcat]}, route: index}\n"
                      "default: index\n")
    assert_clean_error(engramma("policy", "check", broken),
                       f"{broken}:4: rules[0].when.kind[0]: 'fcat' is not one of fact")
    policy.write_text("version: 1\nname: team\ndefault: sideways\n")
    assert_clean_error(engramma("policy", "set", store, policy), "'sideways' is not one of index, train, both or drop")
    stats = engramma("stats", store)  # the store still opens, on the last good version of its policy
    assert stats.returncode == 0 and f"policy: {policy}" in stats.stdout
    assert "the policy file is broken, its last good version is in force" in stats.stderr


def test_ingest_reports_each_bad_line_and_keeps_every_good_one(tmp_path):
    """Lines that parse but cannot be stored (too long, broken Unicode) are bad lines like any other: the
    good lines of the same batch still go in."""
    store, data = tmp_path / "store", tmp_path / "items.jsonl"
    good = [json.dumps({"text": f"Good item {n}: the {c} van leaves at {n} pm."}).encode()
            for n, c in enumerate(["red", "blue", "green"])]
    data.write_bytes(b"\n".join([
        good[0],
        json.dumps({"text": "x" * 40_000}).encode(),                 # over MemoryConfig.max_text_chars
        b'{"text": "caf\xe9 latte"}',                               # Latin-1, not UTF-8
        good[1],
        b'{"text": "half a character \\ud800 here"}',                # JSON that decodes to a lone surrogate
        good[2],
    ]) + b"\n")
    out = engramma("ingest", store, data, "--json")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    report = json.loads(out.stdout)
    assert report["ingested"] == 3
    errors = {entry["line"]: entry["error"] for entry in report["bad_lines"]}
    assert sorted(errors) == [2, 3, 5]
    assert "40000 characters is over the limit" in errors[2]
    assert errors[3].startswith("not valid UTF-8")
    assert errors[5].startswith("text: not valid Unicode text")
    texts = {hit["text"] for hit in json.loads(engramma("recall", store, "when does the van leave", "-k", "5",
                                                         "--json").stdout)}
    assert texts == {json.loads(line)["text"] for line in good}


def test_the_installed_console_script_runs():
    """`engramma` as pip installs it ([project.scripts]), not only `python -m engramma.cli`."""
    from pathlib import Path

    script = Path(sys.executable).parent / "engramma"
    assert script.is_file(), "the console script is missing: is the package installed?"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0 and "recall" in result.stdout and "consolidate" in result.stdout
