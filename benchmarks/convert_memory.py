"""Peak memory of converting OSUM's checkpoint and of loading the result, against the bytes of the LLM's weights.

    python benchmarks/convert_memory.py [--layers 24]

Builds, locally, a checkpoint with the names of OSUM's released `infer.pt` around a random LLM of Qwen2-0.5B's
shapes (24 layers x 896, 14 heads, 2 KV heads, MLP 4864, 151,936-token vocabulary, tied output; 494M
parameters) with LoRA r 8 as OSUM wraps it, a small Whisper-shaped encoder (4 x 384) and OSUM's adapter; the
LLM is stored in bfloat16, as OSUM trains it. Then, each in a fresh process: `osum convert osum-ckpt` with the
default (bfloat16) and with `--dtype float32`, and `osum.models.checkpoint.load_model` of each result. Printed:
each process's peak resident memory, the same less what importing torch, transformers and osum costs (measured
in its own process), and that as a multiple of the LLM's weights in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = "import torch, transformers, peft, osum.models.checkpoint, osum.convert.osum_ckpt"
# VmHWM: this process's own peak resident set (ru_maxrss would count the parent's, inherited at fork)
PEAK = ("hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(json.dumps({'peak_kb': int(hwm.split()[1])}))")


def in_fresh_process(code: str) -> int:
    """Run `code` after the imports in a new interpreter; its peak resident set in bytes."""
    program = f"import json\n{IMPORTS}\n{code}\n{PEAK}\n"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=3600,
                          cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed:\n{code}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"] * 1024


def write_checkpoint(tmp: Path, layers: int) -> tuple[Path, Path, Path, int]:
    """infer.pt with OSUM's names, the LLM directory (config + tokenizer) and Whisper config it needs, and the
    number of LLM parameters (LoRA excluded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from model_parts import tiny_tokenizer
    from test_convert_osum import wenet_block

    d, mels, frames, a_layers, a_ffn, a_pos = 384, 80, 1500, 2, 2048, 1000
    llm_dir = tmp / "qwen2-0.5b-shaped"
    tiny_tokenizer(llm_dir, chat=False)
    config = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=layers, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True)
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    hf_config.save_pretrained(llm_dir)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    n_llm = sum(p.numel() for p in llm.parameters())
    llm = get_peft_model(llm, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "down_proj"]))
    state = {f"llama_model.{k}": v for k, v in llm.state_dict().items()}
    del llm
    hidden = 896
    state.update({"encoder.embed.conv.0.weight": torch.randn(d, mels, 3) * 0.1, "encoder.embed.conv.0.bias": torch.zeros(d),
                  "encoder.embed.conv.2.weight": torch.randn(d, d, 3) * 0.1, "encoder.embed.conv.2.bias": torch.zeros(d),
                  "encoder.embed.pos_enc.pe": torch.randn(1, frames, d) * 0.1,
                  "encoder.after_norm.weight": torch.ones(d), "encoder.after_norm.bias": torch.zeros(d)})
    for n in range(4):
        state.update(wenet_block(f"encoder.encoders.{n}.", d, 4 * d, k_bias=False))
    for index in (1, 4, 7):
        state[f"down_sample_2.conv.{index}.weight"] = torch.randn(d, d, 3) * 0.1
        state[f"down_sample_2.conv.{index}.bias"] = torch.zeros(d)
    state.update({"speech_transformer.embed.out.0.weight": torch.randn(d, d) * 0.1,
                  "speech_transformer.embed.out.0.bias": torch.zeros(d),
                  "speech_transformer.embed.out.1.weight": torch.ones(d),
                  "speech_transformer.embed.out.1.bias": torch.zeros(d),
                  "speech_transformer.embed.pos_enc.pe": torch.randn(1, a_pos, d) * 0.1,
                  "speech_transformer.after_norm.weight": torch.ones(d), "speech_transformer.after_norm.bias": torch.zeros(d),
                  "speech_llama_proj.weight": torch.randn(hidden, d) * 0.1, "speech_llama_proj.bias": torch.zeros(hidden),
                  "speech_token_emded.weight": torch.randn(4099, hidden) * 0.1})
    for n in range(a_layers):
        state.update(wenet_block(f"speech_transformer.encoders.{n}.", d, a_ffn, k_bias=True))
    torch.save(state, tmp / "infer.pt")
    whisper = tmp / "whisper"
    whisper.mkdir()
    (whisper / "config.json").write_text(json.dumps({
        "model_type": "whisper", "num_mel_bins": mels, "d_model": d, "encoder_attention_heads": 6,
        "encoder_layers": 4, "encoder_ffn_dim": 4 * d, "max_source_positions": frames}))
    return tmp / "infer.pt", llm_dir, whisper, n_llm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24, help="LLM layers (Qwen2-0.5B: 24)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, llm_dir, whisper, n_llm = write_checkpoint(tmp, args.layers)
        bf16_bytes = 2 * n_llm
        baseline = in_fresh_process("pass")
        rows = []
        for dtype in ("bfloat16", "float32"):
            out = tmp / f"model-{dtype}"
            convert = (f"from osum.convert.osum_ckpt import convert_osum_checkpoint\n"
                       f"convert_osum_checkpoint({str(ckpt)!r}, {str(whisper)!r}, {str(llm_dir)!r}, {str(out)!r}, "
                       f"dtype={dtype!r})")
            rows.append((f"convert, --dtype {dtype}", in_fresh_process(convert)))
            load = f"from osum.models.checkpoint import load_model\nm = load_model({str(out)!r})"
            rows.append((f"load the {dtype} model directory", in_fresh_process(load)))
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            rows.append((f"  (its directory on disk: {size / 2**30:.2f} GiB)", None))
        print(f"LLM of Qwen2-0.5B's shapes with {args.layers} layers: {n_llm / 1e6:.0f}M parameters, "
              f"{bf16_bytes / 2**30:.2f} GiB in bfloat16; checkpoint {ckpt.stat().st_size / 2**30:.2f} GiB; "
              f"importing torch + transformers + osum: {baseline / 2**30:.2f} GiB")
        print("| step | peak RSS | less imports | x bf16 LLM bytes |\n|---|---|---|---|")
        for name, peak in rows:
            if peak is None:
                print(f"| {name} | | | |")
                continue
            print(f"| {name} | {peak / 2**30:.2f} GiB | {(peak - baseline) / 2**30:.2f} GiB | "
                  f"{(peak - baseline) / bf16_bytes:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
