"""Domain values shared by the controller, store, scheduler and interfaces (no Ray imports)."""
