"""Session work over time: the sweep, recurrence of tasks, and the task controls of the CLI and the runner."""
