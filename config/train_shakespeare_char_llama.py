# The shakespeare_char recipe with LLaMA's architecture: RMSNorm, SwiGLU, rotary positions, grouped-query
# attention (6 query heads share 2 key/value heads), no biases, untied output head.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_llama.py

out_dir = "out-shakespeare-char-llama"
eval_interval = 250  # the model overfits quickly: evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only the best validation loss
wandb_log = False
wandb_project = "shakespeare-char"
wandb_run_name = "mini-llama"
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
norm = "rmsnorm"
mlp = "swiglu"
pos_emb = "rope"
n_kv_head = 2
bias = False
tie_embeddings = False
