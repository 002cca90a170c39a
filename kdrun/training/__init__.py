"""Training: the loop (trainer), its optimisers and schedules, and where teachers come from.
Above methods, evaluation and sinks; below the CLI."""
