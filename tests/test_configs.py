"""The shipped configs agree on the model's design: of their ``model`` and ``data`` options, only those
in SIZED (what follows the data's size or the machine) may differ between them. ``retrieval`` and the
trainer are not compared: the index and the loop are sized to each dataset and device."""

import copy
import inspect
from importlib.resources import files
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_tt.data.datamodule import YambdaDataModule
from lightning_tt.lightning_cli import CONFIGS
from lightning_tt.model.module import TwoTowerModule

SHIPPED = ("demo.yaml", "yambda-50m.yaml", "yambda-500m.yaml")
#: The config sections compared, and the classes whose defaults stand for an option a config leaves out.
SECTIONS = {"model": TwoTowerModule, "data": YambdaDataModule}

#: The options that may differ between the shipped configs, each with why. Every other ``model`` and
#: ``data`` option is a design choice (docs/ablations.md) and must be the same in all of them.
SIZED = {
    "model.embedding_dim": "the id tables' width grows with the catalogue and the device's memory",
    "model.hidden_dims": "the towers' MLP width is sized with embedding_dim",
    "model.output_dim": "follows embedding_dim (${model.embedding_dim} in every config)",
    "model.estimator_alpha": "the estimator's averaging rate: a larger catalogue's longer gaps want a smaller one",
    "model.estimator_buckets": "hash buckets grow with the catalogue, so collisions stay rare",
    "model.compile": "torch.compile pays for its compilation only on a GPU at large batches",
    "data.data_dir": "each config reads its own prepared dataset",
    "data.batch_size": "sized to the device (and the catalogue the negatives come from)",
    "data.eval_batch_size": "sized to the device's memory",
    "data.num_workers": "loader processes, sized to the machine's cores",
    "data.pin_memory": "only useful with a GPU",
    "data.val_cases": "the validation epoch costs cases x items: sampled on the large datasets only",
}

MISSING = object()


def load(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def shipped() -> dict[str, dict]:
    return {name: load(CONFIGS / name) for name in SHIPPED}


def parameters(cls) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}


def options(config: dict) -> dict[str, object]:
    """``section.name`` -> value of every option of the compared sections, the class's default where the
    config leaves one out (MISSING where there is none)."""
    flat = {}
    for section, cls in SECTIONS.items():
        given, known = config.get(section) or {}, parameters(cls)
        unknown = sorted(set(given) - set(known))
        assert not unknown, f"{section}: not options of {cls.__name__}: {unknown}"
        for name, parameter in known.items():
            default = MISSING if parameter.default is inspect.Parameter.empty else parameter.default
            flat[f"{section}.{name}"] = given.get(name, default)
    return flat


def design_differences(configs: dict[str, dict], allowed=SIZED) -> dict[str, dict[str, object]]:
    """The options outside ``allowed`` whose value is not the same in every config, as
    {option: {config name: value}}."""
    by_config = {name: options(config) for name, config in configs.items()}
    keys = sorted(set().union(*by_config.values()) - set(allowed))
    differences = {}
    for key in keys:
        values = {name: opts.get(key, MISSING) for name, opts in by_config.items()}
        first = next(iter(values.values()))
        if any(value is not first and value != first for value in values.values()):
            differences[key] = values
    return differences


def test_shipped_configs_share_the_model_design():
    assert design_differences(shipped()) == {}


def test_design_differences_of_configs_that_differ_in_one_option():
    demo = load(CONFIGS / "demo.yaml")
    other = copy.deepcopy(demo)
    other["model"]["temperature"] = 0.2
    assert design_differences({"a": demo, "b": other}) == {"model.temperature": {"a": 0.1, "b": 0.2}}
    # An option one config leaves out counts with its default: demo's 20 likes against the default 0.
    del other["model"]["temperature"], other["data"]["feedback"]
    assert design_differences({"a": demo, "b": other}) == {
        "model.temperature": {"a": 0.1, "b": parameters(TwoTowerModule)["temperature"].default},
        "data.feedback": {"a": 20, "b": 0}}
    # What follows the size is allowed to differ; the same value written as 0 and 0.0 is no difference.
    other = copy.deepcopy(demo)
    other["model"].update(embedding_dim=128, output_dim=128, dropout=0)
    other["data"].update(batch_size=8192, num_workers=12)
    assert design_differences({"a": demo, "b": other}) == {}
    assert design_differences({"a": demo, "b": other}, allowed={}) == {
        "data.batch_size": {"a": 1024, "b": 8192}, "data.num_workers": {"a": 0, "b": 12},
        "model.embedding_dim": {"a": 64, "b": 128}, "model.output_dim": {"a": 64, "b": 128}}


def test_configs_sized_options_are_real_options_that_differ():
    """SIZED names options of the classes, each of which does differ between the shipped configs (an
    entry that no longer differs is stale: the option is then a shared design choice again)."""
    configs = shipped()
    for key, reason in SIZED.items():
        section, name = key.split(".", 1)
        assert name in parameters(SECTIONS[section]), key
        assert reason
    differing = design_differences(configs, allowed={})
    assert set(differing) == set(SIZED)


def test_configs_reject_an_option_that_no_class_takes():
    config = load(CONFIGS / "demo.yaml")
    config["model"]["temprature"] = 0.1
    with pytest.raises(AssertionError, match="temprature"):
        options(config)


def test_demo_configs_load_from_the_installed_package():
    packaged = files("lightning_tt") / "configs" / "demo.yaml"
    assert packaged.is_file()
    assert Path(str(packaged)).resolve() == (CONFIGS / "demo.yaml").resolve()
    demo = OmegaConf.to_container(OmegaConf.create(packaged.read_text()), resolve=True)
    assert demo == load(CONFIGS / "demo.yaml")
    assert demo["model"]["temperature"] == 0.1 and demo["data"]["history"] == 50
    # configs/ at the top of the checkout is a link to the package's folder.
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.exists():
        assert checkout.resolve() == CONFIGS.resolve()
