"""How messages come in and replies go out: router, delivery, the CLI socket, webhooks, named queues."""
