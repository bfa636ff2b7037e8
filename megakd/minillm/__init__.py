"""MiniLLM (reverse-KL distillation by policy gradient) and its baselines on instruction data.

Modules: data (jsonl -> prompt/response ids, batches), generate (batched KV-cache sampling from
megatron-core models, TP-aware), losses (reward, future reward, importance weights, PPO clipping,
single-step reverse KL), trainer (sft / kd / seqkd / minillm), evaluate (reverse KL, Rouge-L).
Entry points: examples/train_minillm.py, tools/preprocess_sft.py, tools/generate_responses.py,
tools/eval_generation.py. See docs/MINILLM.md.
"""
