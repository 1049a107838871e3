"""What lands on disk: checkpoint files, the run state, run directories, the metrics log,
atomic writes, bundled models."""
