"""Safetensors checkpoints summed from their headers: hand-written files, counts derived by hand."""

import json
import struct

import pytest
from click.testing import CliRunner

from costmodel import get_model
from costmodel.checkpoint import read_checkpoint, read_header
from reports.cli import main
from costmodel.errors import SpecError

# LLaMA-style, 1 layer, hidden 8, 2 heads of 4, 1 kv head, intermediate 12, vocab 16, untied: 760 parameters.
CONFIG = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
          "num_key_value_heads": 1, "intermediate_size": 12, "vocab_size": 16, "max_position_embeddings": 1024}
L = "model.layers.0."
ATTENTION = {"model.embed_tokens.weight": [16, 8],  # 128
             L + "self_attn.q_proj.weight": [8, 8],  # 64
             L + "self_attn.k_proj.weight": [4, 8],  # 32
             L + "self_attn.v_proj.weight": [4, 8],  # 32
             L + "self_attn.o_proj.weight": [8, 8]}  # 64; 128 + 64 + 32 + 32 + 64 = 320
REST = {L + "mlp.gate_proj.weight": [12, 8],  # 96
        L + "mlp.up_proj.weight": [12, 8],  # 96
        L + "mlp.down_proj.weight": [8, 12],  # 96
        L + "input_layernorm.weight": [8],
        L + "post_attention_layernorm.weight": [8],
        "model.norm.weight": [8],  # 3 norms: 24
        "lm_head.weight": [16, 8]}  # 128; 96 * 3 + 24 + 128 = 440
BITS = {"BF16": 16, "F16": 16, "F32": 32, "F8_E4M3": 8, "I32": 32, "I64": 64}


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, shape)}. Header JSON, then zero bytes for the data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def as_dtype(dtype, shapes):
    return {name: (dtype, shape) for name, shape in shapes.items()}


def model_dir(tmp_path, config=CONFIG):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def report(*args):
    return CliRunner().invoke(main, ["report", *args])


def test_config_has_760_parameters(tmp_path):
    # the spec's count, which the checkpoints below match or miss on purpose
    assert get_model(str(model_dir(tmp_path))).num_params == 760


def test_single_file(tmp_path):
    folder = model_dir(tmp_path)
    write_safetensors(folder / "model.safetensors", as_dtype("BF16", {**ATTENTION, **REST}))
    c = read_checkpoint(str(folder))
    # 320 + 440 = 760 elements, 2 bytes each = 1520 bytes, 5 + 7 = 12 tensors
    assert (c.num_params, c.weights_bytes, c.num_tensors) == (760, 1520, 12)
    assert c.bytes_by_dtype == {"BF16": 1520} and c.tensors_by_dtype == {"BF16": 12}
    assert c.files == ("model.safetensors",) and not c.quantised


def test_header_only_metadata_dropped(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"w": ("F32", [2, 3])})
    assert read_header(str(tmp_path / "a.safetensors")) == {
        "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}  # 2 * 3 * 4 bytes


def test_index_with_shards(tmp_path):
    folder = model_dir(tmp_path)
    write_safetensors(folder / "model-00001-of-00002.safetensors", as_dtype("BF16", ATTENTION))
    write_safetensors(folder / "model-00002-of-00002.safetensors", as_dtype("F32", REST))
    write_safetensors(folder / "consolidated.safetensors", as_dtype("BF16", {**ATTENTION, **REST}))  # not indexed
    weight_map = {**{n: "model-00001-of-00002.safetensors" for n in ATTENTION},
                  **{n: "model-00002-of-00002.safetensors" for n in REST}}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2400}, "weight_map": weight_map}))
    c = read_checkpoint(str(folder))
    # BF16: 320 elements * 2 = 640 B; F32: 440 * 4 = 1760 B; 2400 B in all, the stray file ignored
    assert c.files == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert (c.num_params, c.weights_bytes) == (760, 2400)
    assert c.bytes_by_dtype == {"BF16": 640, "F32": 1760} and c.params_by_dtype == {"BF16": 320, "F32": 440}
    assert c.tensors_by_dtype == {"BF16": 5, "F32": 7}


def test_index_naming_a_missing_shard(tmp_path):
    folder = model_dir(tmp_path)
    write_safetensors(folder / "model-00001-of-00002.safetensors", as_dtype("BF16", ATTENTION))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(SpecError, match="names 2 shards, 1 missing .*'model-00002-of-00002.safetensors'"):
        read_checkpoint(str(folder))


def test_no_checkpoint(tmp_path):
    assert read_checkpoint(str(model_dir(tmp_path))) is None


def test_report_json_and_text(tmp_path):
    folder = model_dir(tmp_path)
    write_safetensors(folder / "model.safetensors", as_dtype("BF16", {**ATTENTION, **REST}))
    r = report(str(folder), "--format", "json", "--dtype", "fp32")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    ck = d["checkpoint"]
    assert (ck["num_params"], ck["weights_bytes"], ck["dtypes"], ck["quantised"]) == (760, 1520, {"BF16": 1520}, False)
    assert d["memory"]["weights_bytes"] == 760 * 4  # not quantised: the spec's 760 parameters at fp32
    assert d["warnings"] == [] and r.stderr == ""  # counts agree
    t = report(str(folder / "config.json"))  # the config file's folder is searched too
    assert t.exit_code == 0, t.output
    line = [x for x in t.stdout.splitlines() if x.startswith("checkpoint:")]
    assert line == ["checkpoint: 1 safetensors file, 12 tensors, 760 elements, 1.52 kB (BF16 1.52 kB); "
                    "weight memory above is the spec's parameters at bf16"]  # 1520 / 1000 = 1.52 (SI)


def test_preset_has_no_checkpoint():
    d = json.loads(report("tiny-llama", "--format", "json").stdout)
    assert "checkpoint" not in d


def test_parameter_count_mismatch_warns(tmp_path):
    folder = model_dir(tmp_path)
    rest = {n: s for n, s in REST.items() if n != "lm_head.weight"}
    write_safetensors(folder / "model.safetensors", as_dtype("BF16", {**ATTENTION, **rest}))
    r = report(str(folder), "--format", "json")
    assert r.exit_code == 0, r.output
    # 760 - 128 (no lm_head) = 632
    msg = "the checkpoint holds 632 elements, m's spec counts 760 parameters (-128)"
    assert json.loads(r.stdout)["warnings"] == [msg]
    assert r.stderr == f"Warning: {msg}\n"


def test_fp8_checkpoint_sets_weight_memory(tmp_path):
    folder = model_dir(tmp_path)
    linear = {n: s for n, s in {**ATTENTION, **REST}.items() if "proj" in n}  # 64+32+32+64+96*3 = 480
    tensors = {**as_dtype("F8_E4M3", linear),
               **{n.replace("weight", "weight_scale"): ("F32", []) for n in linear},  # 7 scalar scales
               **as_dtype("BF16", {n: s for n, s in {**ATTENTION, **REST}.items() if n not in linear})}  # 280
    write_safetensors(folder / "model.safetensors", tensors)
    r = report(str(folder), "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    ck = d["checkpoint"]
    # F8: 480 * 1 = 480 B; F32: 7 * 4 = 28 B; BF16: 280 * 2 = 560 B; 1068 B, 767 elements
    assert ck["dtypes"] == {"F8_E4M3": 480, "F32": 28, "BF16": 560}
    assert (ck["num_params"], ck["weights_bytes"], ck["tensors_by_dtype"]["F8_E4M3"]) == (767, 1068, 7)
    assert ck["quantised"] and ck["quantised_dtypes"] == ["F8_E4M3"] and ck["weight_memory_from_checkpoint"]
    assert d["memory"]["weights_bytes"] == 1068  # the checkpoint's bytes, not 760 * 2
    assert d["warnings"] == ["the checkpoint holds 767 elements, m's spec counts 760 parameters (+7); the "
                             "checkpoint is quantised (matrices in F8_E4M3), so its element count is not "
                             "the parameter count"]
    t = report(str(folder))
    assert "quantised (matrices in F8_E4M3): the weight memory above is the checkpoint's bytes" in t.stdout
    assert "memory: weights 1.07 kB" in t.stdout  # 1068 / 1000 = 1.07 (SI)


def test_packed_int4_and_integer_buffers(tmp_path):
    # GPTQ-style: 8 x 8 int4 weights packed 8 per int32 as qweight [1, 8] (32 B), fp16 scales [1, 8] (16 B)
    write_safetensors(tmp_path / "model.safetensors", {"q.qweight": ("I32", [1, 8]), "q.scales": ("F16", [1, 8])})
    c = read_checkpoint(str(tmp_path))
    assert (c.num_params, c.weights_bytes, c.quantised_dtypes) == (16, 48, ("I32",))
    # an int64 position-id vector beside float weights is no quantisation
    (tmp_path / "model.safetensors").unlink()
    write_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", [4, 4]), "position_ids": ("I64", [4])})
    c = read_checkpoint(str(tmp_path))
    assert (c.num_params, c.weights_bytes, c.quantised) == (20, 64, False)  # 16 * 2 + 4 * 8


def test_cached_id_reads_the_snapshot_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--m"
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    (snapshot / "config.json").write_text(json.dumps(CONFIG))
    write_safetensors(repo / "blobs" / "abc123", as_dtype("BF16", {**ATTENTION, **REST}))
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / "abc123")  # as huggingface_hub links them
    r = report("org/m", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["checkpoint"]["weights_bytes"] == 1520


def _raw(path, header, data=b"", length=None):
    """The length field (default: the header's length), the header bytes, the data bytes."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


W = b'{"w": {"dtype": "F32", "shape": %s, "data_offsets": [0, 8]}}'


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"\x01\x02"), "2 bytes, shorter than the 8-byte header length"),
    (lambda p: _raw(p, b"{}", length=2**40), "header length 1,099,511,627,776 bytes, but the file has 2 bytes"),
    (lambda p: _raw(p, b"{{{{"), "header is not JSON"),
    (lambda p: _raw(p, b"[]"), "header is a JSON list, not an object"),
    (lambda p: _raw(p, b'{"w": {"dtype": "F32", "shape": [2]}}'), "tensor 'w' needs dtype, shape and data_offsets"),
    (lambda p: _raw(p, W % b"[2]"), r"tensor 'w' has data_offsets \[0, 8\]; expected \[begin, end\] within the 0 data bytes"),
    (lambda p: _raw(p, W % b"[3]", bytes(8)), r"tensor 'w' spans 8 bytes, but shape \[3\] of F32 needs 12"),  # 3 * 4
    (lambda p: _raw(p, W % b"[-2]", bytes(8)), r"has shape \[-2\]"),
])
def test_corrupt_headers(tmp_path, make, message):
    make(tmp_path / "model.safetensors")
    with pytest.raises(SpecError, match=message) as e:
        read_checkpoint(str(tmp_path))
    assert "\n" not in str(e.value) and "corrupt safetensors file" in str(e.value)


def test_corrupt_header_through_the_cli(tmp_path):
    folder = model_dir(tmp_path)
    _raw(folder / "model.safetensors", b"{}", length=2**63)
    r = report(str(folder))
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "corrupt safetensors file" in r.output and "header length 9,223,372,036,854,775,808 bytes" in r.output


def test_fit_warning_extends_the_checkpoint_warnings(tmp_path):
    folder = model_dir(tmp_path)
    rest = {n: s for n, s in REST.items() if n != "lm_head.weight"}
    write_safetensors(folder / "model.safetensors", as_dtype("BF16", {**ATTENTION, **rest}))
    hw = tmp_path / "hw.json"  # 1,000 bytes as sold, no reported total
    hw.write_text(json.dumps({"id": "tiny-gpu", "name": "tiny", "peak_flops_per_s": {"bf16": 1e12},
                              "memory_bytes": 1000, "memory_bandwidth_bytes_per_s": 1e9}))
    r = report(str(folder), "--hardware", str(hw), "--format", "json")
    assert r.exit_code == 0, r.output
    ckpt = "the checkpoint holds 632 elements, m's spec counts 760 parameters (-128)"
    # weights: the spec's 760 parameters x 2 bytes (bf16) = 1,520 > 1,000
    fit = ("does not fit: the weights alone (1,520 bytes) exceed the 1,000 bytes of one tiny-gpu (the capacity "
           "it is sold by); the latency shown assumes a device that holds it")
    assert json.loads(r.stdout)["warnings"] == [ckpt, fit]
    assert r.stderr == f"Warning: {ckpt}\nWarning: {fit}\n"
