# GPT-2 XL (1.56B) from scratch on OpenWebText, FSDP: weights, gradients and AdamW state sharded over the GPUs.
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=2 train.py config/train_gpt2_xl.py
# Its speed and memory per GPU: docs/results.md

wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2-xl"

dataset = "openwebtext"
preset = "gpt2-xl"
fsdp = True
# 16 sequences x 1024 tokens x 32 accumulation steps = 524,288 tokens per step (spread over the processes)
batch_size = 16
gradient_accumulation_steps = 32

# GPT-3's schedule for its 1.3B model (Brown et al. 2020, table 2.1): peak 2e-4, ~300B tokens
learning_rate = 2e-4
min_lr = 2e-5
max_iters = 572000
lr_decay_iters = 572000
warmup_iters = 700

eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
