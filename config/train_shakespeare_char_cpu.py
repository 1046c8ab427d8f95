# The quick start: a tiny character-level model that trains on a laptop CPU in a few minutes.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py

out_dir = "out-shakespeare-char-cpu"
eval_interval = 250
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

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
