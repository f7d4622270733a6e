"""One router per concern: segment, tasks, health, metrics, demo."""
