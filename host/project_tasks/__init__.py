"""Project-level scheduled tasks from YAML (DESIGN §9): their specs, targets and firing."""
