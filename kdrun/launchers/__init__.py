"""kdrun's Hydra launchers. This folder ships as `hydra_plugins.kdrun_launchers` (Hydra finds
plugins under that namespace only; pyproject.toml maps it), and `kdrun` registers it as well,
so an editable install finds it too. Its modules import Hydra alone at the top: Hydra imports
every plugin whenever it starts, --help and tab completion included."""
