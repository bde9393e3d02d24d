"""The README documents every setting and the two set-up commands."""

from __future__ import annotations

from contract.settings import Settings
from tests.conftest import ROOT


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.append(f"IMAGEGEN_{name.upper()}")
        elif isinstance(alias, str):
            names.append(alias)
        else:  # AliasChoices: the first is the documented one
            names.append(str(alias.choices[0]))
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in env_names() if f"`{name}`" not in readme]
    assert not missing, f"settings missing from README.md: {missing}"


def test_quick_start_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
