"""Recipes: a typed schema (dataclasses + OmegaConf), ``extends:``, ``key=value`` overrides, validation.

Every mistake a user can make in a recipe is caught here, before anything runs, and raised as a
:class:`ConfigError` with one line that says what is wrong and how to fix it. :mod:`.schema` holds the
sections and their checks, :mod:`.load` reads files and overrides, :mod:`.resume` the recipe of a run
continued with ``--resume``.
"""

from ssal.recipe.load import from_dict, load_recipe, parse_overrides, read_yaml, to_yaml
from ssal.recipe.resume import recipe_changes, resume_recipe
from ssal.recipe.schema import CHOICES, DataConfig, ModelConfig, TrainConfig, schema, validate, validate_pool

__all__ = ["CHOICES", "DataConfig", "ModelConfig", "TrainConfig", "from_dict", "load_recipe", "parse_overrides",
           "read_yaml", "recipe_changes", "resume_recipe", "schema", "to_yaml", "validate", "validate_pool"]
