"""The README starts with the two commands and documents every CLI command."""
from pathlib import Path

from engramma.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_starts_with_the_two_commands():
    head = "\n".join(README.splitlines()[:15])
    assert "make demo" in head and "make test" in head


def test_every_cli_command_is_in_the_readme():
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        assert f"engramma {name} " in README, f"`engramma {name}` is missing from README.md"
    for group in app.registered_groups:
        for command in group.typer_instance.registered_commands:
            name = f"{group.name} {command.name}"
            assert f"engramma {name} " in README, f"`engramma {name}` is missing from README.md"


def test_the_readme_policy_example_is_a_valid_policy():
    from engramma.policies import parse_policy

    block = README.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(block, "README.md")
    assert policy.name == "support-bot" and len(policy.rules) == 7


def test_the_readme_agent_loop_runs_with_the_readme_policy(tmp_path, monkeypatch, tiny_model_path):
    """The ten-line snippet, as printed, with the README's own policy file; only the model is the tiny one
    (the snippet's default, SmolLM2, is for the slow tests)."""
    snippet = README.split("## In an agent loop (ten lines)\n\n```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 10
    policy = README.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy += f"model: {{name: {tiny_model_path}, max_length: 64}}\n"
    policy += "consolidation: {training: {epochs: 20, batch_size: 4}}\ngate: {max_perplexity_increase: 1.0}\n"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.yaml").write_text(policy)
    code = snippet.replace("load_model()", f"load_model({str(tiny_model_path)!r})")
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102
    import duckdb

    with duckdb.connect(str(tmp_path / "store" / "engramma.duckdb"), read_only=True) as con:
        routes = dict(con.execute("SELECT kind, route FROM items").fetchall())
        versions = con.execute("SELECT version FROM adapters").fetchall()
    assert routes == {"fact": "index", "correction": "both"}
    assert versions == [("v1",)], "the correction was queued and consolidated"
