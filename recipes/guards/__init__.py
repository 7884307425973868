"""Guard tasks: things the base model already knows, scored to catch regressions."""
