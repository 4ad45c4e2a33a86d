"""One config (modcomp/config.py + configs/*.yaml): each setting declared once, the recipe's field names equal to
the stages' flags, a stage run by hand without flags runs the default recipe, and every field may be swept."""
import os

import pytest

from modcomp import capture, closed_form, config, modular, runner, workflow
from modcomp import workflow_cli as W
from modcomp.utils import UserError

STAGE_PARSERS = {
    "capture": lambda argv: capture.parse_args(["--task", "cb", "--output_dir", "o", *argv]),
    "modules": lambda argv: modular.build_parser("mha", "", argv).parse_args(
        ["--activations_dir", "a", "--output_dir", "o", *argv]),
    "finetune": lambda argv: runner.parse_args(["--task", "cb", "--output_dir", "o", *argv]),
}


def stage_values(stage, ns):
    """{field: value as the recipe holds it} of a parsed stage command line."""
    out = {}
    for name, f in config.FIELDS.items():
        if stage in f.stages and hasattr(ns, f.dest or name):
            v = getattr(ns, f.dest or name)
            out[name] = v
    return out


def test_every_field_has_one_default_in_the_default_recipe_and_a_meaning():
    _, d = config.read_recipe("default")
    assert set(d) == set(config.FIELDS)
    assert all(f.help and (f.stages or name in ("teacher", "distill")) for name, f in config.FIELDS.items())
    _, p = config.read_recipe("paper")   # extends the default: names only what differs
    assert (p["teacher"], p["init"], p["module_epochs"], p["augment"], p["ft_epochs"], p["ft_lr"], p["distill"]) == \
        ("pretrained", "random", 200, 4, 18, 2e-5, 0)
    assert {k for k in p if p[k] != d[k]} == {"teacher", "init", "module_epochs", "augment", "ft_epochs", "ft_lr",
                                              "distill", "allocate", "fit_tokens"}


@pytest.mark.parametrize("stage", sorted(STAGE_PARSERS))
def test_a_stage_run_without_flags_runs_the_default_recipe(stage):
    _, d = config.read_recipe("default")
    got = stage_values(stage, STAGE_PARSERS[stage]([]))
    want = {k: config.stage_value(k, v) for k, v in d.items() if stage in config.FIELDS[k].stages}
    if stage == "finetune":   # no --modules_dir: the uncompressed model; with one, the recipe's compression
        assert got.pop("compression") is None and want.pop("compression") == 2.0
        assert STAGE_PARSERS[stage](["--modules_dir", "m"]).compression == 2.0
    assert got == want
    if stage == "capture":    # the closed form's tokens plus the held-out tenth
        assert STAGE_PARSERS[stage]([]).max_tokens == (65536 * 10 + 8) // 9
        assert STAGE_PARSERS[stage](["--max_tokens", "all"]).max_tokens is None   # every token


def test_the_stages_take_the_recipe_field_names_and_their_older_names():
    ns = STAGE_PARSERS["finetune"](["--ft_lr", "3e-5", "--ft_epochs", "2", "--model", "m"])
    assert (ns.lr, ns.epochs, ns.model_name_or_path) == (3e-5, 2, "m")
    ns = STAGE_PARSERS["finetune"](["--lr", "3e-5", "--epochs", "2", "--model_name_or_path", "m"])
    assert (ns.lr, ns.epochs, ns.model_name_or_path) == (3e-5, 2, "m")
    ns = STAGE_PARSERS["modules"](["--module_epochs", "4", "--module_lr", "1e-3", "--module_seed", "7"])
    assert (ns.epochs, ns.lr, ns.seed) == (4, 1e-3, 7)
    ns = STAGE_PARSERS["modules"](["--init", "svd"])             # allocation and token subset follow --init data
    assert ns.allocate is False and ns.fit_tokens is None
    ns = STAGE_PARSERS["modules"](["--allocate", "0", "--fit_tokens", "all", "--mixup"])
    assert ns.allocate is False and ns.fit_tokens is None and ns.mixup is True
    with pytest.raises(UserError, match="--currency"):
        STAGE_PARSERS["modules"](["--currency", "nope"])


def test_a_stage_reads_another_recipe_with_config(tmp_path):
    ns = STAGE_PARSERS["finetune"](["--config", "paper"])
    assert (ns.epochs, ns.lr, ns.init) == (18, 2e-5, "random")
    own = tmp_path / "mine.yaml"
    own.write_text("extends: paper\nft_epochs: 5\n")
    ns = STAGE_PARSERS["finetune"](["--config", str(own)])
    assert (ns.epochs, ns.lr) == (5, 2e-5)
    own.write_text("compression: [2, 4]\n")
    with pytest.raises(UserError, match="a sweep"):
        STAGE_PARSERS["modules"](["--config", str(own)])


@pytest.mark.parametrize("text,msg", [
    ("ft_lr: fast\n", "--ft_lr must be a number"),
    ("nope: 1\n", "unknown field 'nope'"),
    ("init: [data, pca]\n", "--init must be"),
    ("- a\n- b\n", "a mapping"),
    ("extends: mine\n", "makes a circle"),
    ("ft_epochs: [\n", "cannot read it as YAML"),
])
def test_a_bad_recipe_file_is_one_line_error(tmp_path, text, msg):
    own = tmp_path / "mine.yaml"
    own.write_text(text)
    with pytest.raises(UserError, match=msg.replace("[", r"\[")):
        config.resolve(str(own), {})


def test_flag_environment_and_recipe_take_the_same_names():
    o = W.parse("sweep", ["--ft_lr", "3e-5"], {"FT_LR": "5e-5", "FT_EPOCHS": "2", "OUT_DIR": "/tmp/x"})
    assert (o["fields"]["ft_lr"], o["fields"]["ft_epochs"]) == (3e-5, 2)
    for name in config.FIELDS:   # every field is a pipeline flag of its own name
        o = W.parse("pipeline", [f"--{name}", ""] if config.FIELDS[name].optional else [], {"OUT_DIR": "/tmp/x"})
        assert name in o["fields"]


def test_any_field_may_be_a_list_a_sweep_over_its_values(tmp_path):
    o = W.parse("sweep", ["--tasks", "cb", "--seeds", "1 2", "--compression", "2 4", "--currency",
                          "output layernorm", "--out_dir", str(tmp_path)], {})
    assert len(o["settings"]) == 4 and sorted(config.swept(o["fields"])) == ["compression", "currency"]
    jobs, targets = workflow.plan(o)
    stages = [j["stage"] for j in jobs.values()]
    # baselines and captures shared by the four settings; modules and fine-tunes one per (seed, setting)
    assert (stages.count("baseline"), stages.count("capture"), stages.count("modules"), stages.count("finetune")) \
        == (2, 2, 8, 8)
    assert len(targets) == 2 + 8
    # a field that a setting makes moot (init svd: no allocation, no currency) gives one setting, not two
    o = W.parse("sweep", ["--tasks", "cb", "--seeds", "1", "--init", "svd", "--currency", "output layernorm",
                          "--out_dir", str(tmp_path)], {})
    assert len(o["settings"]) == 1
    own = tmp_path / "sweep.yaml"
    own.write_text("ft_lr: [1.0e-4, 5.0e-5]\n")
    o = W.parse("sweep", ["--recipe", str(own), "--tasks", "cb", "--seeds", "1", "--out_dir", str(tmp_path)], {})
    assert [f["ft_lr"] for f in o["settings"]] == [1e-4, 5e-5]
    jobs, _ = workflow.plan(o)
    assert [j["stage"] for j in jobs.values()].count("baseline") == 2   # another lr: another teacher


def test_the_planned_stage_commands_give_the_stages_exactly_the_recipe(tmp_path):
    """Round trip: every command the workflow plans, read back by that stage's own parser, holds the fields of its
    setting (so a stage never falls back to a default the recipe did not say)."""
    o = W.parse("sweep", ["--tasks", "cb", "--seeds", "1", "--recipe", "paper", "--compression", "3",
                          "--ft_lr", "7e-5", "--out_dir", str(tmp_path)], {})
    (f,) = o["settings"]
    jobs, _ = workflow.plan(o)
    for job in jobs.values():
        for cmd in job["cmds"]:
            script = os.path.basename(cmd[1])
            stage = {"capture_data.py": "capture", "mha_modular.py": "modules", "ffn_modular.py": "modules",
                     "run_superglue.py": "finetune"}[script]
            ns = {"capture": capture.parse_args, "modules": modular.build_parser("mha", "", cmd[2:]).parse_args,
                  "finetune": runner.parse_args}[stage](cmd[2:])
            want = {k: config.stage_value(k, f[k]) for k in config.FIELDS if stage in config.FIELDS[k].stages}
            got = stage_values(stage, ns)
            if job["stage"] == "baseline":
                want["compression"], want.pop("model"), got.pop("model")   # the baseline: uncompressed
                want["compression"] = None
            if stage == "finetune" and job["stage"] != "baseline":
                want.pop("model"), got.pop("model")   # the fine-tuned teacher's dir, or MODEL
            assert got == want, (script, {k: (got.get(k), want.get(k)) for k in want if got.get(k) != want.get(k)})


def test_closed_form_takes_the_recipes_module_fields():
    ns = closed_form.parse_args(["--activations_dir", "a", "--output_dir", "o"])
    assert (ns.compression, ns.fit_tokens, ns.holdout, ns.seed) == (2.0, 65536, 0.1, 42)
    assert not hasattr(ns, "allocate")


def test_a_run_identity_holds_only_the_settings_it_uses():
    """The baseline's command carries the recipe's init and distillation weights (every fine-tune field), but
    they are no setting of an uncompressed, undistilled run: baselines of recipes that differ only there are one
    run (the workflow shares them: their paths hold only the baseline fields)."""
    base = ["--task", "cb", "--output_dir", "o", "--model", "org/some-hub-id"]
    a = runner.parse_args(base + ["--init", "svd"])
    b = runner.parse_args(base + ["--init", "data", "--distill_alpha", "0.3"])
    assert runner.run_identity(a) == runner.run_identity(b)
    c = runner.parse_args(base + ["--ft_lr", "3e-5"])
    assert runner.run_identity(a) != runner.run_identity(c)
