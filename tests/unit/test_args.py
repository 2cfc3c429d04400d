"""Config validation of the calibration plugin (``axolotl_calib_plugin.args``) through Axolotl's real
schema: the plugin is registered with ``prepare_plugins`` and its args merged by ``validate_config``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from axolotl_calib_plugin.train.args import CalibrationArgs
from axolotl_calib_plugin.train.config_checks import is_plugin_listed


def _error(validate_cfg, cfg) -> str:
    with pytest.raises((ValidationError, ValueError)) as info:
        validate_cfg(cfg)
    return str(info.value)


# ------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize(
    "mode, scope, train_on_inputs",
    [("cft", "answer", False), ("rcft", "prompt_and_answer", True)],
)
def test_presets_fill_scope_lambda_and_train_on_inputs(validate_cfg, tiny_cfg, mode, scope, train_on_inputs):
    out = validate_cfg(tiny_cfg(calib_mode=mode))
    assert out.calib_mode == mode
    assert out.calib_sft_scope == scope
    assert out.calib_lambda == 1.0
    assert out.train_on_inputs is train_on_inputs


def test_default_mode_is_cft_and_defaults_are_documented_values(validate_cfg, tiny_cfg):
    out = validate_cfg(tiny_cfg())
    assert (out.calib_mode, out.calib_sft_scope, out.train_on_inputs) == ("cft", "answer", False)
    assert (out.calib_bins, out.calib_refresh, out.calib_ece_loss) == (10, "epoch", "mse")
    assert (out.calib_nonmax_split, out.calib_prompt_format, out.calib_estep_batch_size) == ("proportional", "plain", 8)
    assert (out.calib_field_question, out.calib_field_choices, out.calib_field_answer) == ("question", "choices", "answer")


def test_explicit_keys_override_the_preset(validate_cfg, tiny_cfg):
    out = validate_cfg(tiny_cfg(calib_mode="cft", calib_lambda=0.25, calib_sft_scope="prompt_and_answer"))
    assert out.calib_lambda == 0.25
    assert out.calib_sft_scope == "prompt_and_answer"
    assert out.train_on_inputs is True


def test_lambda_zero_is_allowed(validate_cfg, tiny_cfg):
    assert validate_cfg(tiny_cfg(calib_lambda=0)).calib_lambda == 0.0


def test_consistent_train_on_inputs_is_accepted(validate_cfg, tiny_cfg):
    assert validate_cfg(tiny_cfg(calib_mode="rcft", train_on_inputs=True)).train_on_inputs is True
    assert validate_cfg(tiny_cfg(calib_mode="cft", train_on_inputs=False)).train_on_inputs is False


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"calib_mode": "rcft", "train_on_inputs": False}, "calib_mode: rcft"),
        ({"calib_mode": "cft", "train_on_inputs": True}, "calib_mode: cft"),
        ({"calib_sft_scope": "answer", "calib_mode": "rcft", "train_on_inputs": True}, "calib_sft_scope: answer"),
    ],
)
def test_contradicting_train_on_inputs_names_both_keys(validate_cfg, tiny_cfg, overrides, fragment):
    msg = _error(validate_cfg, tiny_cfg(**overrides))
    assert fragment in msg
    assert "train_on_inputs" in msg


# ------------------------------------------------------------------------------------------- typos
@pytest.mark.parametrize(
    "key, suggestion",
    [("calib_lamda", "calib_lambda"), ("calib_bin", "calib_bins"), ("calb_refresh", "calib_refresh"),
     ("calibration_mode", "calib_mode"), ("calib_ece_los", "calib_ece_loss"), ("calib_estp", "calib_estep")],
)
def test_misspelled_keys_are_rejected_with_did_you_mean(validate_cfg, tiny_cfg, key, suggestion):
    msg = _error(validate_cfg, tiny_cfg(**{key: 1}))
    assert repr(key) in msg
    assert f"did you mean {suggestion!r}" in msg
    assert "valid keys:" in msg and "calib_estep_batch_size" in msg


def test_unknown_non_calib_keys_keep_axolotl_behaviour(validate_cfg, tiny_cfg):
    # Axolotl ignores unknown keys; we only police our own namespace.
    out = validate_cfg(tiny_cfg(some_other_plugin_key=3))
    assert "some_other_plugin_key" not in out


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    "key, value",
    [
        ("calib_lambda", -0.5),
        ("calib_lambda", float("nan")),
        ("calib_lambda", float("inf")),
        ("calib_bins", 1),
        ("calib_mode", "sft"),
        ("calib_refresh", 0),
        ("calib_refresh", -3),
        ("calib_refresh", "step"),
        ("calib_refresh", True),
        ("calib_ece_loss", "l1"),
        ("calib_nonmax_split", "random"),
        ("calib_prompt_format", "alpaca"),
        ("calib_sft_scope", "question"),
        ("calib_estep_batch_size", 0),
        ("calib_option_letters", ["A"]),
        ("calib_option_letters", ["A", "B", "A"]),
        ("calib_option_letters", ["A", " B"]),
        ("calib_option_letters", ["A", ""]),
    ],
)
def test_invalid_values_name_the_key(validate_cfg, tiny_cfg, key, value):
    assert key in _error(validate_cfg, tiny_cfg(**{key: value}))


@pytest.mark.parametrize("value, expected", [("epoch", "epoch"), (5, 5), ("12", 12)])
def test_refresh_accepts_epoch_or_positive_steps(validate_cfg, tiny_cfg, value, expected):
    assert validate_cfg(tiny_cfg(calib_refresh=value)).calib_refresh == expected


def test_option_letters_string_is_split_into_characters(validate_cfg, tiny_cfg):
    assert validate_cfg(tiny_cfg(calib_option_letters="ABCD")).calib_option_letters == ["A", "B", "C", "D"]


# ------------------------------------------------------------------------------------------- other keys
def test_sample_packing_is_supported(validate_cfg, tiny_cfg):
    assert validate_cfg(tiny_cfg(sample_packing=True, attn_implementation="sdpa")).sample_packing is True


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"batch_flattening": True}, "batch_flattening"),
        ({"excess_length_strategy": "truncate"}, "excess_length_strategy: truncate"),
        ({"datasets": [{"path": "x.jsonl", "type": "alpaca"}]}, "datasets[0] type: alpaca"),
        ({"datasets": [{"path": "a.jsonl", "type": "axolotl_calib_plugin.mcq"},
                       {"path": "b.jsonl", "type": "chat_template"}]}, "datasets[1] type: chat_template"),
    ],
)
def test_incompatible_settings_are_rejected(validate_cfg, tiny_cfg, overrides, fragment):
    assert fragment in _error(validate_cfg, tiny_cfg(**overrides))


def test_explicit_load_function_type_counts_as_ours(validate_cfg, tiny_cfg):
    out = validate_cfg(tiny_cfg(datasets=[{"path": "x.jsonl", "type": "axolotl_calib_plugin.mcq.load"}]))
    assert out.calib_mode == "cft"


# ------------------------------------------------------------------------------------------- plugin listing
def test_plugin_listed_under_its_module_path_too():
    assert is_plugin_listed(["axolotl_calib_plugin.CalibrationPlugin"])
    assert is_plugin_listed(["x.Y", "axolotl_calib_plugin.plugin.CalibrationPlugin"])
    assert not is_plugin_listed(["axolotl.integrations.kd.KDPlugin"])
    assert not is_plugin_listed(None)


def test_calib_keys_in_a_config_that_lists_other_plugins_only(validate_cfg, tiny_cfg):
    """Our args stay merged in a process once registered; a later config that forgot us is caught."""
    validate_cfg(tiny_cfg())  # registers the plugin in the singleton
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    other = tiny_cfg(plugins=["axolotl.integrations.grokfast.GrokfastPlugin"], calib_lambda=0.5)
    from axolotl.utils.config import prepare_plugins

    prepare_plugins(other)
    with pytest.raises(ValidationError, match="does not list axolotl_calib_plugin.CalibrationPlugin"):
        validate_config(DictDefault(other))
    # ... and a config with neither the plugin nor calib keys is left alone (no train_on_inputs rewrite).
    plain = tiny_cfg(plugins=["axolotl.integrations.grokfast.GrokfastPlugin"], train_on_inputs=True,
                     calib_option_letters=None, datasets=[{"path": "x.jsonl", "type": "alpaca"}])
    assert validate_config(DictDefault(plain)).train_on_inputs is True


def test_without_any_plugin_axolotl_drops_the_keys_silently(validate_cfg, tiny_cfg):
    """Documents the Axolotl behaviour the dataset strategy has to catch (see test_mcq)."""
    out = validate_cfg(tiny_cfg(plugins=None, calib_lambda=0.5))
    assert "calib_lambda" not in out


# ------------------------------------------------------------------------------------------- from_cfg
def test_from_cfg_resolves_presets_without_mutating():
    cfg = {"calib_mode": "rcft", "learning_rate": 1.0}
    s = CalibrationArgs.from_cfg(cfg)
    assert (s.calib_sft_scope, s.calib_lambda, s.train_on_inputs) == ("prompt_and_answer", 1.0, True)
    assert cfg == {"calib_mode": "rcft", "learning_rate": 1.0}


def test_from_cfg_rejects_typos_and_contradictions():
    with pytest.raises(ValueError, match="did you mean 'calib_bins'"):
        CalibrationArgs.from_cfg({"calib_binz": 3})
    with pytest.raises(ValueError, match="train_on_inputs"):
        CalibrationArgs.from_cfg({"calib_mode": "rcft", "train_on_inputs": False})


def test_sample_packing_needs_an_attention_that_isolates_packed_samples(validate_cfg, tiny_cfg):
    # unset: Axolotl does not isolate packed samples (measured: option probabilities shift by up to 5e-3)
    msg = _error(validate_cfg, tiny_cfg(sample_packing=True))
    assert "sample_packing: true" in msg and "attn_implementation: sdpa" in msg
    for ok in ({"attn_implementation": "sdpa"}, {"attn_implementation": "eager"},
               {"attn_implementation": "flex_attention"}, {"sdp_attention": True}):
        validate_cfg(tiny_cfg(sample_packing=True, **ok))


@pytest.mark.parametrize("key", ["calib_lambda", "calib_heldout_prior", "calib_bins", "calib_estep_batch_size",
                                 "calib_eval_batch_size", "calib_label_smoothing"])
@pytest.mark.parametrize("value", [True, False])
def test_a_yaml_bool_on_a_numeric_key_is_refused_naming_it(key, value):
    """``calib_lambda: false`` would otherwise train plain SFT (0) and ``true`` lambda 1 without a word."""
    from pydantic import ValidationError

    from axolotl_calib_plugin.train.args import CalibrationArgs

    with pytest.raises(ValidationError, match=f"{key} is a number, got {value!r}"):
        CalibrationArgs(**{key: value})
