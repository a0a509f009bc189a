"""Hugging Face ids resolved offline in a fake local cache laid out as huggingface_hub lays it out."""

import json
import os

import pytest
from click.testing import CliRunner

from costmodel import get_model
from reports.cli import main
from costmodel.errors import SpecError
from costmodel.hub import cache_dir, find_config, parse_repo_id

CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")

# LLaMA-style, 1 layer: embed 16*8 + layer (q 64 + k 32 + v 32 + o 64 + mlp 3*8*12 + 2 norms 16 = 496)
# + final norm 8 + lm_head 128 = 760 parameters.
CONFIG = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
          "num_key_value_heads": 1, "intermediate_size": 12, "vocab_size": 16, "max_position_embeddings": 1024}
HASH = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No cache variable set, and HOME in tmp_path, so the real cache is never looked at."""
    for var in CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def make_repo(cache, repo="Qwen/Qwen3-8B", commit=HASH, ref="main", config=CONFIG):
    """<cache>/models--ORG--NAME/{refs/<ref>, snapshots/<commit>/config.json}; the folder of the snapshot."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    if ref is not None:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)  # huggingface_hub writes the hash, no newline
    return snapshot


@pytest.mark.parametrize("set_vars, expected", [
    ({}, "home/.cache/huggingface/hub"),
    ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/hub"),
    ({"XDG_CACHE_HOME": "xdg", "HF_HOME": "hfhome"}, "hfhome/hub"),
    ({"HF_HOME": "hfhome", "HUGGINGFACE_HUB_CACHE": "legacy"}, "legacy"),
    ({"HF_HOME": "hfhome", "HUGGINGFACE_HUB_CACHE": "legacy", "HF_HUB_CACHE": "hubcache"}, "hubcache"),
])
def test_cache_dir_precedence(env, tmp_path, set_vars, expected):
    # huggingface_hub.constants: HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub
    # > XDG_CACHE_HOME/huggingface/hub > ~/.cache/huggingface/hub
    for var, value in set_vars.items():
        env.setenv(var, str(tmp_path / value))
    assert cache_dir() == str(tmp_path / expected)


def test_cache_dir_expands_user_and_vars(env, tmp_path):
    env.setenv("ROOT", str(tmp_path))
    env.setenv("HF_HOME", "$ROOT/hf")
    assert cache_dir() == os.path.join(str(tmp_path), "hf", "hub")
    env.setenv("HF_HUB_CACHE", "~/hubcache")
    assert cache_dir() == str(tmp_path / "home" / "hubcache")


@pytest.mark.parametrize("set_var, root", [("HF_HUB_CACHE", "c"), ("HF_HOME", "h/hub"),
                                           ("XDG_CACHE_HOME", "x/huggingface/hub"), (None, "home/.cache/huggingface/hub")])
def test_id_resolves_through_refs_main(env, tmp_path, set_var, root):
    if set_var:
        env.setenv(set_var, str(tmp_path / root.split("/")[0]))
    snapshot = make_repo(tmp_path / root)
    assert find_config("Qwen/Qwen3-8B") == str(snapshot / "config.json")
    spec = get_model("Qwen/Qwen3-8B")
    assert spec.name == "Qwen/Qwen3-8B" and spec.num_params == 760 and spec.num_kv_heads == 1


def test_refs_main_picks_its_snapshot_among_several(env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path))
    make_repo(tmp_path, commit="a" * 40, ref=None, config={**CONFIG, "num_hidden_layers": 2})
    make_repo(tmp_path, commit="b" * 40)  # refs/main -> bbbb...
    assert get_model("Qwen/Qwen3-8B").num_layers == 1


def test_revision_as_ref_or_hash(env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path))
    make_repo(tmp_path, commit="a" * 40, ref="v1", config={**CONFIG, "num_hidden_layers": 3})
    make_repo(tmp_path, commit="b" * 40)
    assert get_model("Qwen/Qwen3-8B@v1").num_layers == 3  # refs/v1 -> aaaa...
    assert get_model("Qwen/Qwen3-8B@" + "a" * 40).num_layers == 3  # a hash under snapshots/
    assert get_model("Qwen/Qwen3-8B@main").num_layers == 1
    assert get_model("Qwen/Qwen3-8B@v1").name == "Qwen/Qwen3-8B@v1"


def test_not_found_lists_the_paths(env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SpecError) as e:
        get_model("Qwen/Qwen3-8B")
    msg = str(e.value)
    folder = tmp_path / "models--Qwen--Qwen3-8B"
    assert "not in the local Hugging Face cache" in msg and "\n" not in msg
    assert str(folder / "refs" / "main") in msg
    assert str(folder / "snapshots" / "main" / "config.json") in msg  # no ref: main read as a hash
    assert "HF_HUB_CACHE, else HF_HOME/hub" in msg and "models--ORG--NAME" in msg


def test_ref_without_snapshot_names_the_snapshot(env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "models--Qwen--Qwen3-8B" / "refs").mkdir(parents=True)
    (tmp_path / "models--Qwen--Qwen3-8B" / "refs" / "main").write_text(HASH)
    with pytest.raises(SpecError, match=f"snapshots/{HASH}/config.json"):
        get_model("Qwen/Qwen3-8B")


def test_cli_not_found_is_one_line_exit_2(env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path))
    r = CliRunner().invoke(main, ["report", "Qwen/Qwen3-8B"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert str(tmp_path / "models--Qwen--Qwen3-8B" / "refs" / "main") in r.output


def test_cli_report_of_cached_id(env, tmp_path):
    env.setenv("HF_HUB_CACHE", str(tmp_path))
    make_repo(tmp_path)
    r = CliRunner().invoke(main, ["report", "Qwen/Qwen3-8B", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["model"]["name"] == "Qwen/Qwen3-8B" and d["model"]["num_params"] == 760
    assert "checkpoint" not in d  # config only, no safetensors in the snapshot


def test_paths_keep_their_errors(env, tmp_path, monkeypatch):
    env.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="cannot read config 'dir/config.json'"):
        get_model("dir/config.json")  # a missing relative config path is not an id
    folder = tmp_path / "org" / "name"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    assert get_model("org/name").name == "name"  # an existing folder wins over the cache


@pytest.mark.parametrize("name, parsed", [
    ("Qwen/Qwen3-8B", ("Qwen/Qwen3-8B", "main")),
    ("Qwen/Qwen2.5-7B-Instruct@v1.0", ("Qwen/Qwen2.5-7B-Instruct", "v1.0")),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ("gpt2", None), ("dir/config.json", None), ("/abs/path", None), ("./rel/path", None),
    ("a/b/c", None), ("org/../x", None), ("org--x/name", None), ("org/name@", None),
])
def test_parse_repo_id(name, parsed):
    assert parse_repo_id(name) == parsed
