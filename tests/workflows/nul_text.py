"""Text with a NUL character, which PostgreSQL cannot store: as an output, and in an error."""

from statepipe import Workflow

wf = Workflow("nul_text")


@wf.step
def text(where: str = "output") -> str:
    if where == "error":
        raise ValueError("bad\x00byte")
    return "a\x00b"
