"""A step making one chat turn with a tool the model may call."""

from statepipe import Workflow, llm

wf = Workflow("llm_tools", models=["fake-model"])

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]


@wf.step
def ask(ctx, question: str = "What is the weather in Paris?") -> dict:
    return llm.chat(ctx, [{"role": "user", "content": question}], model="fake-model", tools=TOOLS)
