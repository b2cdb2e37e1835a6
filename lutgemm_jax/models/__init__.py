"""Decoder families wired for LUT-GEMM: plain Flax linen models whose ``nn.Dense`` layers are
quantized by `quantize_model` and run through LUT-GEMM inside `lutgemm_jax.linen.intercept_dense`
(which `forward` and `generate` enter for BCQ params).

Families: OPT (`lutgemm_jax.models.opt`) and the Llama family (`lutgemm_jax.models.llama`:
Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3). Shared machinery, one module per concern:
``hf_config`` (config.json, RoPE settings), ``hf_checkpoint`` (safetensors in/out, the
`HFCheckpointError`), ``tokenizer``, ``kv_cache``, ``sampling``, ``generation``, ``perplexity``,
``decode_bench``, ``quantize_decoder``, ``tensor_parallel``; ``registry`` dispatches on
``model_type``. ``gguf`` (with ``gguf_quants``, ``gguf_tokenizer``) loads llama.cpp files
(`load_gguf`), quantized tensors converted exactly to BCQ.

Typical use::

    config, params = models.load_hf_checkpoint("path/to/Llama-3.2-1B")
    model = models.from_config(config)
    qparams = models.quantize_model(params, bits=3, group_size=128)
    out = models.generate(model, qparams, ids, mask, max_new_tokens=32)
"""

from lutgemm_jax.models import llama, opt
from lutgemm_jax.models.decode_bench import benchmark_decode, bytes_read_per_token, param_bytes
from lutgemm_jax.models.generation import Generation, forward, forward_jit, generate, pad_batch
from lutgemm_jax.models.gguf import GGUFError, UnsupportedTensorTypeError, load_gguf
from lutgemm_jax.models.hf_checkpoint import HFCheckpointError, MissingTensorError
from lutgemm_jax.models.llama import Llama, LlamaConfig
from lutgemm_jax.models.opt import OPT, OPTConfig
from lutgemm_jax.models.perplexity import perplexity
from lutgemm_jax.models.quantize_decoder import (
    calibration_runner,
    quantize_model,
    untie_lm_head,
)
from lutgemm_jax.models.registry import (
    MODEL_TYPES,
    config_from_dict,
    family_of,
    from_config,
    init_params,
    load_hf_checkpoint,
    preset,
    presets,
    read_config,
    save_hf_checkpoint,
)
from lutgemm_jax.models.sampling import Sampling
from lutgemm_jax.models.tokenizer import ByteTokenizer, load_tokenizer

__all__ = [
    "MODEL_TYPES",
    "OPT",
    "ByteTokenizer",
    "GGUFError",
    "Generation",
    "HFCheckpointError",
    "Llama",
    "LlamaConfig",
    "MissingTensorError",
    "OPTConfig",
    "Sampling",
    "UnsupportedTensorTypeError",
    "benchmark_decode",
    "bytes_read_per_token",
    "config_from_dict",
    "family_of",
    "forward",
    "forward_jit",
    "from_config",
    "generate",
    "init_params",
    "llama",
    "load_gguf",
    "load_hf_checkpoint",
    "load_tokenizer",
    "opt",
    "pad_batch",
    "param_bytes",
    "perplexity",
    "preset",
    "presets",
    "calibration_runner",
    "quantize_model",
    "read_config",
    "save_hf_checkpoint",
    "untie_lm_head",
]
