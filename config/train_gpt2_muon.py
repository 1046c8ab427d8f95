# GPT-2 124M with a modern recipe: Muon for the blocks' matrices (AdamW for the embeddings, head and gains),
# LLaMA-style blocks (RMSNorm, rotary positions, no biases, an untied head) with QK-norm, heads of 128, a ReLU^2
# MLP, a logit soft-cap, zero-initialised output projections and an RMS-normed token embedding, and a stable rate
# that decays linearly to zero. The model's width and depth are config/train_gpt2.py's, the baseline it is compared
# with; its 524,288 tokens a step are modded-nanogpt's. docs/results.md has the ladder of what each part buys.
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
n_head = 6  # heads of 128 (768 / 6), as in the ladder of docs/results.md
embed_norm = True  # the token embedding RMS-normed before the first block
logit_softcap = 15.0
zero_init_proj = True

# the optimizer: Muon takes larger steps than AdamW can, so the run is far shorter than the baseline's
optimizer = "muon"
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 3e-3  # the AdamW part: head, gains
embed_lr = 0.02  # the normed embedding's scale does not reach the blocks, so it can take larger steps
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.95

# modded-nanogpt's schedule: no warmup, a stable rate, then a linear decay to zero over the last 70% of the run
lr_schedule = "wsd"
decay_fraction = 0.7
warmup_iters = 0
max_iters = 5000
min_lr = 0.0

eval_interval = 250
eval_iters = 200
log_interval = 10
