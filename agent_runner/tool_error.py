"""The one error a tool call is refused with (its own module: the tools and the group tools both raise it)."""


class ToolError(ValueError):
    """A refused tool call; the message goes back to the model (or the slash-command user) as is."""
