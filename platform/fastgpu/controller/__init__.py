"""The controller: decisions in :mod:`.core`, the Ray actor and its client in :mod:`.actor`."""
