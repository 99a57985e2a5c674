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
