# GPT-2 124M on OpenWebText, the reproduction run: 8 GPUs, ~0.5M tokens per step.
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2-124M"

dataset = "openwebtext"
# 30 sequences x 1024 tokens x 16 accumulation steps = 491,520 tokens per step (spread over the processes).
# nanoGPT's 12 x 40 is the same batch; 30 keeps a large GPU busier per micro-step (docs/results.md), and a 40 GB
# one still holds it
batch_size = 30
block_size = 1024
gradient_accumulation_steps = 2 * 8

# 600k steps = ~300B tokens
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
