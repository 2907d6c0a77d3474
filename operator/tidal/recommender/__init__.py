"""Config recommender: vLLM engine settings for a model on a GPU type, with the arithmetic behind them.

Pure core (no Kubernetes, no network, no clock): ``models``/``catalog`` describe the model, ``gpus`` the
accelerator, ``memory`` follows how vLLM sizes weights and KV cache, ``perf`` predicts step latency, and
``recommend`` chooses TP/PP, memory fraction, max_model_len, max_num_seqs and max_num_batched_tokens.
"""

from __future__ import annotations
