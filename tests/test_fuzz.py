"""Property-based fuzzing (Hypothesis) of what users type: config files, ``--set`` assignments and class lists.
Whatever they hold, the parsers end in a valid object or a ``GSLoRAError``, never in another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gslora.cli import _apply_sets, _split_classes
from gslora.config import PretrainConfig, SequenceConfig, from_dict
from gslora.data import build_requests, resolve_classes
from gslora.engine import ForgetConfig
from gslora.errors import GSLoRAError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SECTIONS = {
    "data": ["dataset", "root", "image_size"],
    "sequence": ["requests", "num_requests", "classes_per_request", "order_seed", "ratio", "shots", "subset_seed",
                 "missing_classes"],
    "train": ["epochs", "min_steps", "batch_size", "lr", "weight_decay", "min_lr", "warmup_epochs", "augment",
              "jitter", "label_smoothing", "seed", "device", "max_grad_norm"],
    "method": ["name", "beta", "bnd", "alpha", "rank", "lora_alpha", "alpha_warmup_epochs", "w_f", "w_r", "bnd_pro",
               "distance", "prototypes", "mask_missing", "penalty", "rehearsal"],
    "model": ["family", "name", "depth", "width", "heads", "patch_size", "image_size", "in_chans", "num_classes",
              "head", "stem", "mean", "std", "drop_path"],
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["gs_lora", "gs_lora_pp", "ewc", "kl", "cosine", "cpu",
                                                           "auto", "fashion-mnist", "timm", "conv", "1e-3", "-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


@st.composite
def config_trees(draw, sections: tuple[str, ...]):
    tree = {}
    for section in draw(st.lists(st.sampled_from([*sections, "junk"]), max_size=4, unique=True)):
        keys = SECTIONS.get(section, ["x"])
        if draw(st.booleans()):
            tree[section] = draw(values)  # not even a mapping, sometimes
        else:
            tree[section] = draw(st.dictionaries(st.sampled_from([*keys, "unknown_key"]), values, max_size=5))
    if draw(st.booleans()):
        tree["checkpoint"] = draw(scalars)
    return tree


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(config_trees(("data", "sequence", "train", "method")))
def test_forget_config_parser_gives_a_config_or_a_gslora_error(tree):
    try:
        config = from_dict(ForgetConfig, tree)
    except GSLoRAError:
        return
    assert config.train.epochs >= 1 and math.isfinite(config.train.lr) and config.train.lr > 0
    assert 0 < config.sequence.ratio <= 1


@FUZZ
@given(config_trees(("data", "model", "train")))
def test_pretrain_config_parser_gives_a_config_or_a_gslora_error(tree):
    try:
        config = from_dict(PretrainConfig, tree)
    except GSLoRAError:
        return
    assert config.model.image_size % config.model.patch_size == 0 or config.model.name is not None


known_keys = st.sampled_from([f"{section}.{key}" for section, keys in SECTIONS.items() if section != "model"
                              for key in keys])
assignment_values = st.one_of(st.text(max_size=8), st.sampled_from(["1e-3", "-1", "0", "true", "[1, 2]", "null", "nan",
                                                                    "{a: 1}", "[[Bag]]", "'x'", "1e400"]))


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=30), st.tuples(known_keys, assignment_values).map("=".join)),
                max_size=4))
def test_set_assignments_give_a_tree_or_a_gslora_error(assignments):
    tree: dict = {}
    try:
        _apply_sets(tree, assignments)
    except GSLoRAError:
        return
    try:
        from_dict(ForgetConfig, tree)
    except GSLoRAError:
        pass


@FUZZ
@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from([*CLASSES, "bag", " Coat ", "3", "10", "-1", "x"]),
                                                max_size=5).map(",".join)))
@example("--1")  # int() refuses it although "-1".lstrip("-") is digits
@example("²")  # a Unicode digit int() cannot read
def test_class_lists_resolve_to_known_ids_or_a_gslora_error(text):
    tokens = _split_classes(text)
    try:
        ids = resolve_classes(tokens, CLASSES)
    except GSLoRAError:
        return
    assert len(ids) == len(set(ids)) == len(tokens) and all(0 <= i < len(CLASSES) for i in ids)


@FUZZ
@given(st.lists(st.lists(st.one_of(st.sampled_from(CLASSES), st.integers(-2, 12), st.text(max_size=5)),
                         max_size=4), max_size=4),
       st.lists(st.integers(0, 9), max_size=9, unique=True))
def test_request_sequences_are_valid_or_refused(requests, forgotten):
    try:
        sequence = from_dict(SequenceConfig, {"requests": requests})
        built = build_requests(sequence, CLASSES, forgotten=forgotten)
    except GSLoRAError:
        return
    seen = set(forgotten)
    for request in built:
        assert request.forget and not set(request.forget) & seen and request.retain
        seen |= set(request.forget)


def test_yaml_ids_may_be_integers_or_names():
    sequence = from_dict(SequenceConfig, {"requests": [["Bag", 3], ["7"]]})
    assert [[r for r in req] for req in sequence.requests] == [["Bag", 3], ["7"]]
    assert [r.forget for r in build_requests(sequence, CLASSES)] == [(8, 3), (7,)]


@pytest.mark.parametrize("text", ["a,,b", " , ", "Bag,bag"])
def test_split_classes_ignores_blanks(text):
    assert "" not in _split_classes(text)
