"""Keep the README true: the two commands, every config key, every shipped config mentioned where it matters."""

from pathlib import Path

from tuneforge.config import describe

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_two_commands_at_the_top():
    head = README[:1500]
    assert "make demo" in head and "make test" in head


def test_every_config_key_is_documented():
    keys = [line.split("`")[1] for line in describe().splitlines()[2:]]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert not missing, f"README lacks these keys (regenerate with `tuneforge config --reference`): {missing}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
