# The shakespeare_char recipe with GPT-3's attention pattern: dense layers alternating with locally banded ones.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_gpt3.py

out_dir = "out-shakespeare-char-gpt3"
eval_interval = 250  # the model overfits quickly: evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only the best validation loss
wandb_log = False
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt3-pattern"
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

# the architecture: GPT-2's, with GPT-3's attention pattern (Brown et al. 2020, from the Sparse Transformer).
# The paper gives no band width; a quarter of the context here. Flex attention has no dropout, so while
# dropout is on the banded layers train through SDPA with the explicit band mask (same result, no speed-up).
attn_pattern = "alternating"  # layers 2, 4, 6 attend only to the last window_size characters
window_size = 64
