# The quick start: a tiny character-level model that trains on a laptop CPU in minutes.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py
# LLaMA-style blocks (RoPE, RMSNorm, SwiGLU) learn faster per step than GPT-2's here, so the run can be short
# (docs/results.md compares them).

out_dir = "out-shakespeare-char-cpu"
eval_interval = 1000  # once, at the end: the loss falls all the way
eval_iters = 20
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 6
n_embd = 192
dropout = 0.0
bias = False
pos_emb = "rope"
norm = "rmsnorm"
mlp = "swiglu"

learning_rate = 2e-3
max_iters = 1000
lr_decay_iters = 1000  # the schedule ends with the run
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
