"""Recipes: every shipped YAML validates; unknown keys and wrong types fail naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.training.recipe import (Recipe, apply_overrides, available_recipes,
                                            load_recipe, parse_override, recipe_from_dict,
                                            resolve_recipe_path)

REPO_TRAINING = Path(__file__).resolve().parents[1] / "training"
SHIPPED = ("deeplabv3_resnet50", "unet", "denseaspp161", "deeplabv3_small", "unet_small",
           "denseaspp_small")
MINIMAL = {"model": "unet_small", "epochs": 1, "batch_size": 2, "lr": 0.01}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate_and_build(name):
    from cityseg_deploy.models import get_entry

    recipe = load_recipe(REPO_TRAINING / f"{name}.yaml")
    assert isinstance(recipe, Recipe)
    get_entry(recipe.model)  # a registered architecture
    assert recipe.label_set in ("cityscapes19", "cityscapes10")


def test_report_settings_of_the_big_recipes():
    dl = load_recipe("deeplabv3_resnet50")
    assert (dl.optimizer, dl.lr, dl.loss, dl.batch_size, dl.epochs) == ("adam", 1e-5, "ce", 1, 72)
    assert dl.train_size == [512, 1024] and dl.label_set == "cityscapes19"
    un = load_recipe("unet")
    assert (un.label_set, un.optimizer, un.lr, un.weight_decay) == ("cityscapes10", "adam", 1e-3, 1e-8)
    assert un.scheduler == "plateau" and un.loss == "ce+dice" and un.early_stop_patience
    da = load_recipe("denseaspp161")
    assert da.label_set == "cityscapes19" and "init_weights" in yaml.safe_load(
        (REPO_TRAINING / "denseaspp161.yaml").read_text())


def test_bare_names_resolve_from_the_repo_training_folder():
    # Through the package's recipes/ folder, which in a checkout is the repository's training/.
    assert set(SHIPPED) <= set(available_recipes())
    assert resolve_recipe_path("unet_small").resolve() == REPO_TRAINING / "unet_small.yaml"
    assert resolve_recipe_path("unet_small.yaml").resolve() == REPO_TRAINING / "unet_small.yaml"
    with pytest.raises(CitysegError, match="unet_small"):  # the message lists what exists
        resolve_recipe_path("no_such_recipe")


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(CitysegError, match=r"'learning_rate'.*unknown"):
        recipe_from_dict({**MINIMAL, "learning_rate": 0.1})
    with pytest.raises(CitysegError, match=r"'augment.flip'.*did you mean 'augment.hflip'"):
        recipe_from_dict({**MINIMAL, "augment": {"flip": 0.5}})


@pytest.mark.parametrize("key,value", [("epochs", "ten"), ("epochs", 2.5), ("lr", "fast"),
                                       ("optimizer", "rmsprop"), ("train_size", 128),
                                       ("amp", True), ("augment", [1, 2])])
def test_wrong_type_is_named(key, value):
    with pytest.raises(CitysegError, match=repr(key).replace("[", r"\[")):
        recipe_from_dict({**MINIMAL, key: value})


def test_missing_required_key_and_bad_values():
    with pytest.raises(CitysegError, match="'lr'.*missing"):
        recipe_from_dict({k: v for k, v in MINIMAL.items() if k != "lr"})
    with pytest.raises(CitysegError, match="'epochs'.*positive"):
        recipe_from_dict({**MINIMAL, "epochs": 0})
    with pytest.raises(CitysegError, match="'train_size'"):
        recipe_from_dict({**MINIMAL, "train_size": [1, 2, 3]})


def test_yaml_exponent_without_dot_is_a_float():
    # PyYAML reads "1e-5" as a string; the schema accepts it as the float it obviously is
    recipe = recipe_from_dict(yaml.safe_load("model: unet_small\nepochs: 1\nbatch_size: 1\nlr: 1e-5\n"))
    assert recipe.lr == 1e-5 and isinstance(recipe.lr, float)


def test_overrides_dotted_keys_and_yaml_values():
    assert parse_override("augment.scale=[1, 1]") == ("augment.scale", [1, 1])
    assert parse_override("lr=1e-3") == ("lr", "1e-3")  # coerced by the schema
    with pytest.raises(CitysegError, match="key=value"):
        parse_override("lr")
    data = apply_overrides({"augment": {"hflip": 0.5}, "lr": 1.0}, {"augment.hflip": 0.0, "lr": 2})
    assert data == {"augment": {"hflip": 0.0}, "lr": 2}
    recipe = load_recipe("unet_small", {"augment.jitter": False, "epochs": 3, "lr": "1e-3"})
    assert recipe.augment.jitter is False and recipe.epochs == 3 and recipe.lr == 1e-3
    with pytest.raises(CitysegError, match="unet_small.yaml.*'batch'"):
        load_recipe("unet_small", {"batch": 3})


def test_unknown_key_with_a_line_break_stays_one_line(tmp_path):
    """Found by the property test: a YAML key "\\n" made a two-line error."""
    from cityseg_deploy.errors import CitysegError
    from cityseg_deploy.training.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text('model: unet_small\n"\\n": 1\n')
    with pytest.raises(CitysegError) as info:
        load_recipe(path)
    assert "\n" not in str(info.value) and "'\\n'" in str(info.value)
