"""How messages come in and replies go out: the ``Channel`` protocol and its registry (base, registry), router,
delivery, the CLI socket, webhooks, named queues, the nudge that wakes the host loop."""
