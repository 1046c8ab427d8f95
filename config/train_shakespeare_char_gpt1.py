# The shakespeare_char recipe with GPT-1's architecture: post-norm blocks (normalise after each residual add, no
# final norm), GELU, learned positions, biases, tied embeddings.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_gpt1.py

out_dir = "out-shakespeare-char-gpt1"
eval_interval = 250  # the model overfits quickly: evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only the best validation loss
wandb_log = False
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt1"
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # 256 characters of context
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3  # small networks tolerate a higher rate
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little higher since there are few tokens per iteration
warmup_iters = 100

# the architecture
post_norm = True
bias = True
