"""The embedded synthetic world: a seeded fact generator, its pretraining corpus and tiny base model.

    from knowpack.world import build_world, default_world_dir
    world_dir = default_world_dir()          # the world shipped with the package
    build_world("/tmp/world", seed=0)        # rebuild one from scratch (a few minutes on CPU)

See `build.py` for the directory layout and SPEC §2 for what the world is for.
"""

from knowpack.world.build import build_world, default_world_dir, evaluate_world
from knowpack.world.generate import Tier, World, WorldConfig, generate_world
from knowpack.world.pretrain import PretrainConfig

__all__ = ["build_world", "default_world_dir", "evaluate_world", "generate_world", "PretrainConfig", "Tier",
           "World", "WorldConfig"]
