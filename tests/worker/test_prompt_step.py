"""The prompt step's own rules: what the text model is told, and which answers become prompts."""

from __future__ import annotations

import pytest

from worker.errors import PermanentError
from worker.providers import GeneratedText
from worker.tasks.prompt_step import checked_prompts, instructions_for


def test_the_instructions_carry_the_task_the_count_and_the_style_guide() -> None:
    assert "one detailed prompt" in instructions_for("enhance", 4, None)
    diversify = instructions_for("diversify", 4, "muted colours\nno text in the image")
    assert "Write 4 distinct prompts" in diversify and "exactly 4 strings" in diversify
    assert diversify.endswith("muted colours\nno text in the image")


def test_enhance_gives_every_variation_the_one_cleaned_prompt() -> None:
    written = GeneratedText(["```text\nPrompt: a red fox, snow, dusk\n```"])
    assert checked_prompts(written, "enhance", 3, 100) == ["a red fox, snow, dusk"] * 3


def test_diversify_keeps_one_prompt_per_variation_in_order() -> None:
    assert checked_prompts(GeneratedText(["a", "Prompt: b"]), "diversify", 2, 100) == ["a", "b"]


@pytest.mark.parametrize(
    ("prompts", "mode", "message"),
    [
        (["a", "b"], "enhance", "returned 2 prompt(s); 1 needed"),
        (["a"], "diversify", "returned 1 prompt(s); 2 needed"),
        (["a", "```\n \n```"], "diversify", "prompt 2 is empty (a str of 9 characters)"),
        (["a", "x" * 101], "diversify", "prompt 2 is a str of 101 characters; at most 100"),
        # A model's answer meets the rule every other prompt source does (it had reached the image model).
        (["a", "a red car\x1b[2J\x00 evil"], "diversify", "prompt 2 contains the control character U+001B at"),
    ],
)
def test_answers_that_cannot_be_prompts_are_permanent(prompts: list[str], mode: str, message: str) -> None:
    with pytest.raises(PermanentError) as caught:
        checked_prompts(GeneratedText(prompts), mode, 2, 100)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "xxxxxxxxxx" not in str(caught.value)
