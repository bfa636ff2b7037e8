"""Launch megakd entry points with NeMo-Run: torchrun on this machine, or Slurm multi-node jobs.

`plan` holds the recipe table and the world-size arithmetic (no NeMo-Run needed); `nemo` builds
NeMo-Run executors and experiments from them. The CLI is tools/launch.py.
"""

from megakd.launch.plan import RECIPES, LaunchError, Recipe, World, get_recipe, plan_world

__all__ = ["RECIPES", "LaunchError", "Recipe", "World", "get_recipe", "plan_world"]
