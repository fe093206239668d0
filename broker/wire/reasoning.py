"""Reasoning effort ⇄ thinking budgets: one table for every protocol that names one or the other.

OpenAI's `reasoning_effort` / Responses' `reasoning.effort` is a level; Anthropic's
`thinking.budget_tokens` (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking:
1,024 at least, 16k+ suggested for complex tasks) and Gemini's `thinkingConfig.thinkingBudget`
(https://ai.google.dev/gemini-api/docs/thinking: 0 turns it off where a model allows) are token counts.
A level maps to a budget inside its own band, so level → budget → level comes back the same.
"""

from __future__ import annotations

# Budgets below a bound are its level: under 4,096 "low", under 16,384 "medium", beyond "high".
EFFORT_BANDS = ((4096, "low"), (16384, "medium"))
BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768}


def budget_for(effort: object) -> int | None:
    """The thinking budget for an effort level; 0 for "none"; None when no level (or an unknown one) is given."""
    if effort == "none":
        return 0
    return BUDGETS.get(effort) if isinstance(effort, str) else None


def effort_for(budget: int) -> str:
    return next((effort for limit, effort in EFFORT_BANDS if budget < limit), "high")
