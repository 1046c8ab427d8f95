# GPT-2 124M with a modern recipe: Muon for the blocks' matrices (AdamW for the embeddings, head and gains),
# LLaMA-style blocks (RMSNorm, rotary positions, no biases, an untied head) with QK-norm, a ReLU^2 MLP, a logit
# soft-cap and zero-initialised output projections, and a warmup-stable-decay schedule. The model's size and the
# tokens per step are config/train_gpt2.py's, the baseline it is compared with (docs/results.md).
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_muon.py

wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2-124M-muon"

dataset = "openwebtext"
# 32 sequences x 1024 tokens x 16 accumulation steps = 524,288 tokens per step (spread over the processes)
batch_size = 32
block_size = 1024
gradient_accumulation_steps = 16

# the blocks
norm = "rmsnorm"
pos_emb = "rope"
bias = False
tie_embeddings = False
mlp = "relu2"
qk_norm = True
logit_softcap = 15.0
zero_init_proj = True

# the optimizer: Muon takes larger steps than AdamW can, so the run is far shorter than the baseline's
optimizer = "muon"
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 3e-3  # the AdamW part: embeddings, head, gains
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95

# warmup, a stable rate, then a linear decay to zero over the last 40% of the run
lr_schedule = "wsd"
decay_fraction = 0.4
warmup_iters = 10
max_iters = 5000
min_lr = 0.0

eval_interval = 250
eval_iters = 200
log_interval = 10
