"""kdrun's Hydra config tree; a package so an installed kdrun finds it (as kdrun.conf)."""
