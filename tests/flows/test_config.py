import pytest

from inversescope.config import ConfigError, check_run, load_run_config
from inversescope.core.sites import ModelDims, Site, all_sites, check_sites, parse_site
from inversescope.flows.cli import main


def test_site_names_round_trip():
    assert parse_site("L9H6") == Site(9, 6)
    assert parse_site("L13.attn") == Site(13)
    assert parse_site("L13.attn").name == "L13.attn"
    assert all_sites(2, 2) == ["L0H0", "L0H1", "L0.attn", "L1H0", "L1H1", "L1.attn"]


@pytest.mark.parametrize("bad", ["L9", "9H6", "L9H", "L1.mlp", "l1h1", "L1H1.attn", ""])
def test_unknown_site_names(bad):
    with pytest.raises(ValueError, match="accepted"):
        parse_site(bad)


def test_sites_checked_against_model_shape():
    dims = ModelDims("gpt2", n_layer=4, n_head=4, d_model=128)
    check_sites(["L3H3", "L0.attn"], dims)
    with pytest.raises(ValueError, match="layer 4 does not exist"):
        check_sites(["L4H0"], dims)
    with pytest.raises(ValueError, match="head 7 does not exist"):
        check_sites(["L1H7"], dims)


def test_preset_loads_and_overrides():
    run = load_run_config("ioi-tiny", ["kernel.epsilon=0.2", "prior.n_train=1000"])
    assert run.preset == "ioi-tiny" and run.task == "ioi"
    assert run.kernel.epsilon == 0.2 and run.prior.n_train == 1000
    check_run(run)


def test_yaml_file_over_a_preset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: ioi-tiny\nprior:\n  n_test: 77\nextract:\n  sites: [L1H2]\n")
    run = load_run_config(str(path), ["extract.batch_size=16"])
    assert run.prior.n_test == 77 and run.prior.n_train == 50000
    assert run.extract.sites == ["L1H2"] and run.extract.batch_size == 16


@pytest.mark.parametrize(
    ("spec", "overrides", "message"),
    [
        (
            "no-such-preset",
            [],
            "unknown preset 'no-such-preset'; accepted: icl-gemma2-2b, icl-tiny, ioi-gpt2",
        ),
        ("missing.yaml", [], "config file 'missing.yaml' does not exist"),
        ("ioi-tiny", ["kernel.epsilon=0"], "epsilon=0.0 must be > 0"),
        ("ioi-tiny", ["kernel.epsilon=-1"], "epsilon=-1.0 must be > 0"),
        ("ioi-tiny", ["kernel.delta=1.5"], "delta=1.5 must lie in (0, 1)"),
        ("ioi-tiny", ["task=xyz"], "unknown task 'xyz'; accepted: ioi, icl, refusal"),
        ("ioi-tiny", ["extract.sites=[L1X2]"], "unknown site 'L1X2'"),
        ("ioi-tiny", ["prior.bogus=1"], "prior.bogus: unknown field"),
        ("ioi-tiny", ["target.source=local", "target.path=/nope"], "no config.json"),
        ("ioi-tiny", ["prior.files=[/nope.csv]"], "prior.files: '/nope.csv' does not exist"),
        ("icl-tiny", ["prior.files=[data:x.csv]"], "prior.files: 'data:x.csv' is not shipped"),
        ("ioi-tiny", ["prior.files=[data:icl_words.csv]"], "task ioi takes no prior.files"),
        ("refusal-tiny", ["prior.files=[]"], "task refusal needs query files"),
        ("refusal-tiny", ["labeller.source=hub"], "labeller.source=hub needs labeller.name"),
        ("refusal-tiny", ["labeller.source=local", "labeller.path=/x"], "labeller.path '/x'"),
        ("ioi-tiny", ["dtype=float64"], "dtype: Input should be 'auto'"),
    ],
)
def test_bad_input_is_one_clear_line(spec, overrides, message):
    with pytest.raises(ConfigError) as info:
        check_run(load_run_config(spec, overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_site_outside_the_target_is_refused_before_loading():
    with pytest.raises(ConfigError, match="L9H0: layer 9 does not exist"):
        check_run(load_run_config("ioi-tiny", ["extract.sites=[L9H0]"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nope"], "unknown preset 'nope'"),
        (["run", "ioi-tiny", "--until", "bogus"], "unknown stage 'bogus'; accepted: prior"),
        (["run", "ioi-tiny", "--set", "kernel.delta=0"], "delta=0.0 must lie in (0, 1)"),
        (["run", "ioi-tiny", "--set", "extract.sites=[L0H9]"], "head 9 does not exist"),
        (["run", "ioi-tiny", "--set", "nonsense"], "expected section.field=value"),
    ],
)
def test_cli_exit_code_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing started
