"""Ray Serve applications (import paths for ``serve run`` / Serve config YAML)."""
