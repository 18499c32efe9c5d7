"""The recipes (scripts/train.sh, scripts/eval.sh and their per-row shortcuts, configs/*.yaml),
the README rows behind --row, and tools/plot_logs.py.

The recipes run with a stand-in PYTHON that records its arguments, working
folder and environment instead of launching torchrun, so no GPU (or training
script) is needed.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import plot_logs
from utils.options import ROWS as ROW_FLAGS
from utils.train.params import build_parser, parse_args
from utils.train.recipes import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CONFIGS = ROOT / "configs"

DATASETS = ("lpr4m", "movingfashion")
ROWS = ("icl", "icl_pmd", "icl_pmd_pfr")
RECIPES = [f"{d}_{r}" for d in DATASETS for r in ROWS]

# The argparse dest names of lpr4m_train.py, less "config".
CONTRACT_DESTS = {a.dest for a in build_parser()._actions} - {"help", "config"}
PATH_KEYS = {"data_root", "train_annotation", "index", "pretrained_clip", "init_model", "output_dir", "resume"}
LAUNCH_ENV = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "OUTPUT_DIR",
              "DATA_ROOT", "PRETRAINED_CLIP", "PYTHON", "RICE_VENV", "RECIPE")

STUB = """#!{python}
import json, os, sys
with open(os.environ["FAKE_PYTHON_RECORD"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}, f)
"""


# --------------------------------------------------------------------------- scripts

def test_every_script_parses():
    scripts = sorted(SCRIPTS.glob("*.sh"))
    expected = {f"{kind}_{r}.sh" for r in RECIPES for kind in ("train", "eval")}
    assert expected | {"train.sh", "eval.sh", "common.sh"} <= {p.name for p in scripts}
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


@pytest.fixture
def fake(tmp_path):
    """A stand-in PYTHON, a data root and a CLIP file in tmp; a clean launch environment."""
    stub = tmp_path / "bin" / "fake_python"
    stub.parent.mkdir()
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "data").mkdir()
    (tmp_path / "ViT-B-32.pt").write_bytes(b"not a real checkpoint")
    record = tmp_path / "record.json"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(PYTHON=str(stub), DATA_ROOT=str(tmp_path / "data"), PRETRAINED_CLIP=str(tmp_path / "ViT-B-32.pt"),
               FAKE_PYTHON_RECORD=str(record))
    caller = tmp_path / "elsewhere"
    caller.mkdir()

    def run(recipe, *args, cwd=caller, kind="train", **env_changes):
        run_env = dict(env)
        for key, value in env_changes.items():
            if value is None:
                run_env.pop(key, None)
            else:
                run_env[key] = value
        if record.exists():
            record.unlink()
        result = subprocess.run(["bash", str(SCRIPTS / f"{kind}_{recipe}.sh"), *args], cwd=cwd, env=run_env,
                                capture_output=True, text=True, timeout=60)
        seen = json.loads(record.read_text()) if record.exists() else None
        return result, seen

    run.tmp = tmp_path
    return run


def _value(argv, flag):
    assert argv.count(flag) == 1, f"{flag} should appear once in {argv}"
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_launches_torchrun_with_its_config(fake, recipe):
    result, seen = fake(recipe, "--max_steps", "3", "--note", "with space")
    assert result.returncode == 0, result.stderr
    argv = seen["argv"]
    assert argv[:2] == ["-m", "torch.distributed.run"]
    # the README setting: one machine, two processes, a local standalone rendezvous
    assert _value(argv, "--nproc_per_node") == "2"
    assert _value(argv, "--nnodes") == "1"
    assert _value(argv, "--node_rank") == "0"
    assert "--standalone" in argv and "--rdzv_endpoint" not in argv
    script = argv.index("lpr4m_train.py")
    assert all(a.startswith("--") for a in argv[2:script:2]), "launcher flags come before the script"
    train = argv[script + 1:]
    dataset, row = recipe.split("_", 1)
    assert _value(train, "--config") == f"configs/{dataset}.yaml"
    assert _value(train, "--row") == row
    assert _value(train, "--data_root") == str(fake.tmp / "data")
    assert _value(train, "--pretrained_clip") == str(fake.tmp / "ViT-B-32.pt")
    assert _value(train, "--output_dir") == f"outputs/{recipe}"
    assert _value(train, "--resume") == "latest"
    assert train[-4:] == ["--max_steps", "3", "--note", "with space"], "extra flags go last, unchanged"
    # run from the repository root whatever the caller's folder, so the relative paths resolve
    assert Path(seen["cwd"]) == ROOT
    assert (ROOT / f"configs/{dataset}.yaml").is_file()


@pytest.mark.parametrize("recipe", RECIPES)
def test_eval_recipe_runs_its_script_with_the_row(fake, recipe):
    dataset, row = recipe.split("_", 1)
    result, seen = fake(recipe, "data root", "ckpt.bin", "--precision", "bf16", kind="eval")
    assert result.returncode == 0, result.stderr
    argv = seen["argv"]
    script = "lpr4m_embedding_eval.py" if dataset == "lpr4m" else "movingfashion_eval.py"
    assert argv[0] == str(ROOT / script)
    assert _value(argv, "--row") == row and "--embedding_sim" in argv
    assert _value(argv, "--data_root") == "data root" and _value(argv, "--ckpt_path") == "ckpt.bin"
    assert _value(argv, "--n_gpu") == "2" and _value(argv, "--output_dir") == f"outputs/eval_{recipe}"
    assert argv[-2:] == ["--precision", "bf16"]


def test_multi_node_uses_c10d_rendezvous(fake):
    result, seen = fake("lpr4m_icl_pmd_pfr", NNODES="2", NODE_RANK="1", NPROC_PER_NODE="4",
                        MASTER_ADDR="10.0.0.7", MASTER_PORT="29611")
    assert result.returncode == 0, result.stderr
    argv = seen["argv"]
    launcher = argv[:argv.index("lpr4m_train.py")]
    assert _value(launcher, "--nnodes") == "2"
    assert _value(launcher, "--nproc_per_node") == "4"
    assert _value(launcher, "--node_rank") == "1"
    assert _value(launcher, "--rdzv_backend") == "c10d"
    assert _value(launcher, "--rdzv_endpoint") == "10.0.0.7:29611"
    assert "--standalone" not in launcher


def test_multi_node_needs_a_reachable_master_addr(fake):
    result, seen = fake("lpr4m_icl", NNODES="2", NODE_RANK="0")
    assert result.returncode != 0 and seen is None
    assert "MASTER_ADDR" in result.stderr


@pytest.mark.parametrize("env, message", [
    ({"NODE_RANK": "2", "NNODES": "2", "MASTER_ADDR": "10.0.0.7"}, "NODE_RANK"),
    ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE"),
    ({"NNODES": "0"}, "NNODES"),
])
def test_bad_launch_settings_are_refused(fake, env, message):
    result, seen = fake("lpr4m_icl", **env)
    assert result.returncode != 0 and seen is None
    assert message in result.stderr


def test_paths_and_output_dir_from_the_callers_folder(fake):
    caller = fake.tmp
    result, seen = fake("movingfashion_icl", cwd=caller, DATA_ROOT="data", PRETRAINED_CLIP="ViT-B-32.pt",
                        OUTPUT_DIR="runs/mf")
    assert result.returncode == 0, result.stderr
    train = seen["argv"][seen["argv"].index("lpr4m_train.py") + 1:]
    assert _value(train, "--data_root") == str(caller / "data")
    assert _value(train, "--pretrained_clip") == str(caller / "ViT-B-32.pt")
    assert _value(train, "--output_dir") == str(caller / "runs/mf")


def test_default_python_is_the_repository_venv(fake, tmp_path):
    """Right after the README's set-up, every script runs in the project's environment, activated or not."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(fake.tmp / "bin" / "fake_python")
    result, seen = fake("lpr4m_icl", PYTHON=None, RICE_VENV=str(venv))
    assert result.returncode == 0, result.stderr
    assert seen is not None and seen["argv"][:2] == ["-m", "torch.distributed.run"]
    result, seen = fake("movingfashion_icl_pmd", "data", "ckpt.bin", kind="eval", PYTHON=None, RICE_VENV=str(venv))
    assert result.returncode == 0, result.stderr
    assert seen is not None and seen["argv"][0] == str(ROOT / "movingfashion_eval.py")


def test_recipe_variable_picks_the_recipe_config(fake):
    result, seen = fake("lpr4m_icl_pmd", RECIPE="v1_release")
    assert result.returncode == 0, result.stderr
    train = seen["argv"][seen["argv"].index("lpr4m_train.py") + 1:]
    assert _value(train, "--config") == "configs/lpr4m_v1_release.yaml"
    assert _value(train, "--output_dir") == "outputs/lpr4m_v1_release_icl_pmd"
    result, seen = fake("lpr4m_icl_pmd", RECIPE="v9")
    assert result.returncode != 0 and seen is None
    assert "no configs/lpr4m_v9.yaml" in result.stderr and "v1_release" in result.stderr


@pytest.mark.parametrize("variable", ["DATA_ROOT", "PRETRAINED_CLIP"])
def test_missing_required_variable(fake, variable):
    result, seen = fake("lpr4m_icl_pmd", **{variable: None})
    assert result.returncode != 0 and seen is None
    assert f"{variable} is not set" in result.stderr

    result, seen = fake("lpr4m_icl_pmd", **{variable: str(fake.tmp / "does_not_exist")})
    assert result.returncode != 0 and seen is None
    assert variable in result.stderr and "does_not_exist" in result.stderr


@pytest.mark.parametrize("script, args, message", [
    ("train.sh", [], "usage: bash scripts/train.sh DATASET ROW"),
    ("train.sh", ["lpr4m", "pfr"], "ROW must be icl, icl_pmd or icl_pmd_pfr"),
    ("eval.sh", ["mf", "icl", "d", "c"], "DATASET must be lpr4m or movingfashion"),
    ("eval.sh", ["lpr4m", "icl"], "usage: bash scripts/eval.sh DATASET ROW DATA_ROOT CKPT_PATH"),
])
def test_dataset_and_row_are_checked(script, args, message):
    result = subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr


# The README "Training" table: the flags of each row, as written there.
README_FLAGS = {
    "icl": ["--sim_header", "mean_pooling", "--one_stage"],
    "icl_pmd": ["--sim_header", "cross_attention", "--cross_num_hidden_layers", "2"],
    "icl_pmd_pfr": ["--sim_header", "cross_attention", "--cross_num_hidden_layers", "2", "--recons_feat"],
}


@pytest.mark.parametrize("row", ROWS)
def test_row_flag_equals_the_readme_flags(row):
    common = ["--dataset", "synthetic"]
    by_row = vars(parse_args([*common, "--row", row]))
    by_flags = vars(parse_args([*common, *README_FLAGS[row]]))
    assert by_row.pop("row") == row and by_flags.pop("row") is None
    assert by_row == by_flags
    # a flag on the command line still wins over the row
    assert parse_args([*common, "--row", "icl_pmd", "--cross_num_hidden_layers", "3"]).cross_num_hidden_layers == 3
    assert set(ROW_FLAGS) == set(README_FLAGS)


# --------------------------------------------------------------------------- configs

def _config(dataset):
    return yaml.safe_load((CONFIGS / f"{dataset}.yaml").read_text())


# Configs of release recipes beside each dataset's default one (scripts/train.sh: RECIPE=...).
RECIPE_CONFIGS = {"lpr4m_v1_release": ("lpr4m", "v1_release"), "lpr4m_v2_release": ("lpr4m", "v2_release"),
                  "movingfashion_modern": ("movingfashion", "modern")}
# The recipe of each dataset's default config: MovingFashion's figures are all the v2 release's.
DEFAULT_RECIPE = {"lpr4m": "modern", "movingfashion": "v2_release"}
MODERN_CONFIGS = ("lpr4m", "movingfashion_modern")
# What the release recipes' presets give (v1 main_task_retrieval.py; v2 projects/*/configs).
RELEASE_VALUES = {
    "v1_release": {"lr": 3e-4, "coef_lr": 1e-3, "weight_decay": 0.2, "clip_grad_norm": 1.0,
                   "warmup_proportion": 0.1, "precision": "fp32", "max_frames": 10, "batch_size": 96,
                   "transform_style": "v1"},
    "v2_release": {"lr": 1e-4, "coef_lr": 1e-2, "weight_decay": 0.2, "clip_grad_norm": 0.0,
                   "warmup_proportion": 0.1, "precision": "fp16", "max_frames": 10, "batch_size": 96,
                   "transform_style": "v2", "max_steps": 5000},
}


def test_one_config_per_dataset_and_recipe():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted([*DATASETS, *RECIPE_CONFIGS])


@pytest.mark.parametrize("name", ["lpr4m_v1_release", "lpr4m_v2_release", "movingfashion"])
def test_release_recipe_config_gets_the_recipe_values(name):
    dataset, recipe = RECIPE_CONFIGS.get(name, (name, DEFAULT_RECIPE.get(name)))
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert cfg["dataset"] == dataset and cfg["recipe"] == recipe
    assert not set(cfg) & (PATH_KEYS | {"row", *ROW_FLAGS["icl_pmd_pfr"]})
    assert not set(cfg) & set(PRESETS[recipe]), "the recipe's presets give these"
    args = parse_args(["--config", str(CONFIGS / f"{name}.yaml"), "--data_root", "x"])
    assert args.recipe == recipe
    assert {k: getattr(args, k) for k in RELEASE_VALUES[recipe]} == RELEASE_VALUES[recipe]


@pytest.mark.parametrize("dataset", DATASETS)
def test_default_config_recipe(dataset):
    assert _config(dataset)["recipe"] == DEFAULT_RECIPE[dataset]


@pytest.mark.parametrize("dataset", MODERN_CONFIGS)
def test_config_holds_the_modern_recipe_and_no_row(dataset):
    cfg = _config(dataset)
    assert isinstance(cfg, dict)
    unknown = set(cfg) - CONTRACT_DESTS
    assert not unknown, f"keys that are not flags of lpr4m_train.py: {unknown}"
    assert not set(cfg) & PATH_KEYS, "no data, model or output paths in the configs"
    assert not set(cfg) & {"row", *ROW_FLAGS["icl_pmd_pfr"]}, "the row comes from --row"
    assert cfg["dataset"] == dataset.split("_")[0]
    # the modern recipe (docs/training.md) at the README batch
    expected = {"recipe": "modern", "model_config": "ViT-B/32", "max_frames": 10, "batch_size": 96, "lr": 3e-4, "coef_lr": 1e-3,
                "weight_decay": 0.2, "warmup_proportion": 0.1, "seed": 42}
    assert {k: cfg[k] for k in expected} == expected
    assert all(isinstance(cfg[k], float) for k in ("lr", "coef_lr", "weight_decay", "warmup_proportion"))
    assert cfg["precision"] in ("bf16", "fp16")
    assert isinstance(cfg["epochs"], int) and cfg["epochs"] >= 1
    header = (CONFIGS / f"{dataset}.yaml").read_text().splitlines()[0]
    assert header.startswith("#") and "README" in header


def test_datasets_share_the_model_recipe():
    lpr, mf = _config("lpr4m"), _config("movingfashion_modern")
    allowed = {"dataset", "epochs"}
    assert {k: v for k, v in lpr.items() if k not in allowed} == {k: v for k, v in mf.items() if k not in allowed}


@pytest.mark.parametrize("dataset", [*DATASETS, *RECIPE_CONFIGS])
def test_config_keys_and_values_match_the_real_parser(dataset):
    """Every key is a destination of the training parser and a valid choice."""
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    for key, value in _config(dataset).items():
        assert key in dests, key
        if key in choices:
            assert value in choices[key], (key, value)


# --------------------------------------------------------------------------- plot_logs

def _write_log(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _train_records(steps, with_pmd):
    out = []
    for s in steps:
        r = {"step": s, "epoch": s // 50, "loss": 5.0 / (1 + 0.05 * s), "icl": 4.0 / (1 + 0.05 * s),
             "lr_encoder": 3e-7 * min(1.0, (s + 1) / 10), "lr_heads": 3e-4 * min(1.0, (s + 1) / 10),
             "samples_per_s": 100.0, "mem_mb": 1000.0}
        if with_pmd:
            r.update(pmd=0.7 / (1 + 0.01 * s), pfr=0.1 / (1 + 0.01 * s))
        out.append(r)
    return out


def test_plot_two_runs_with_validation(tmp_path):
    a = _write_log(tmp_path / "lpr4m_icl" / "log.jsonl", _train_records(range(0, 100, 2), False)
                   + [{"step": 50, "epoch": 0, "val": {"R1": 10.0, "R5": 30.0, "R10": 40.0}},
                      {"step": 100, "epoch": 1, "val": {"R1": 14.0, "R5": 33.0, "R10": 45.0},
                       "val_reranked": {"R1": 15.0, "R5": 34.0, "R10": 45.0}}])
    # a resumed run: steps 40.. logged twice; only the later pass is drawn
    b = _write_log(tmp_path / "lpr4m_icl_pmd_pfr" / "log.jsonl", _train_records(range(0, 60, 2), True)
                   + _train_records(range(40, 100, 2), True))
    out = plot_logs.main([str(a), str(b), "--output", str(tmp_path / "plots" / "curves.png")])
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    default = plot_logs.main([str(b)])  # no --output: beside the (first) log
    assert default == tmp_path / "lpr4m_icl_pmd_pfr" / "curves.png" and default.read_bytes()[:4] == b"\x89PNG"


def test_last_pass_keeps_the_later_records():
    records = [{"step": s, "loss": 1.0, "pass": 1} for s in (0, 10, 20, 30)]
    records += [{"step": s, "loss": 1.0, "pass": 2} for s in (20, 30, 40)]
    kept = plot_logs._last_pass(records, Path("log.jsonl"))
    assert [(r["step"], r["pass"]) for r in kept] == [(0, 1), (10, 1), (20, 2), (30, 2), (40, 2)]


def test_read_log_names_the_malformed_line(tmp_path):
    log = _write_log(tmp_path / "run" / "log.jsonl", _train_records([0, 1], False))
    log.write_text(log.read_text() + "\n{\"step\": 2, \"loss\": \n" + json.dumps({"step": 3, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:4: not a JSON record"):
        plot_logs.read_log(log)
    with pytest.raises(SystemExit, match=r"log\.jsonl:4"):
        plot_logs.main([str(log), "--output", str(tmp_path / "c.png")])

    log.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"log\.jsonl:1: expected a JSON object"):
        plot_logs.read_log(log)


def test_read_log_skips_an_unfinished_last_line(tmp_path):
    log = _write_log(tmp_path / "run" / "log.jsonl", _train_records([0, 1], False), tail='{"step": 2, "lo')
    with pytest.warns(UserWarning, match=r"log\.jsonl:3: skipping an unfinished last line"):
        records = plot_logs.read_log(log)
    assert [r["step"] for r in records] == [0, 1]


def test_missing_log_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "log.jsonl"
    with pytest.raises(FileNotFoundError, match="no such log file"):
        plot_logs.read_log(missing)
    with pytest.raises(SystemExit, match=r"error: .*nope.*no such log file"):
        plot_logs.main([str(missing), "--output", str(tmp_path / "c.png")])
    assert not (tmp_path / "c.png").exists()


def test_log_without_training_records_is_an_error(tmp_path):
    log = _write_log(tmp_path / "run" / "log.jsonl", [{"step": 5, "epoch": 0, "val": {"R1": 1.0}}])
    with pytest.raises(SystemExit, match="no training records"):
        plot_logs.main([str(log), "--output", str(tmp_path / "c.png")])


def test_plot_logs_help_runs_as_a_script():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_logs.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "log.jsonl" in result.stdout and "--output" in result.stdout
