"""Adapters for agent frameworks, each behind its own extra:

* ``countersign.adapters.openai_agents`` (``pip install countersign[openai-agents]``)
* ``countersign.adapters.langchain`` (``pip install countersign[langgraph]``)

Importing this package imports neither framework.
"""

from __future__ import annotations

from ..errors import CountersignError, GateError, InvalidArgs

__all__ = ["model_message"]


def model_message(error: CountersignError) -> str:
    """What a model is told when a gated call did not produce a result.

    A gate outcome is its own sentence ("Rejected by sam: wrong customer");
    a refusal by the server says why, with the fields for invalid args."""
    if isinstance(error, GateError):
        return str(error)
    if isinstance(error, InvalidArgs) and error.fields:
        problems = "; ".join(f"{k}: {v}" for k, v in sorted(error.fields.items()))
        return f"countersign refused the call ({error.code}): {problems}"
    return f"countersign refused the call ({error.code}): {error.message}"
