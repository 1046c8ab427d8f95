# A small character-level Shakespeare model on one GPU (the nanoGPT recipe; docs/results.md has its losses).
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char.py
# Another block: add an overlay, e.g. config/arch/llama.py, and an out_dir of its own.

out_dir = "out-shakespeare-char"
eval_interval = 250  # the model overfits quickly: evaluate often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only the best validation loss

wandb_log = False
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt"

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # 256 characters of context

# a baby GPT: 6 layers, 6 heads, 384 wide
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

# eager, each step replayed as one CUDA graph: a step of this small model is mostly kernel launches, which the
# graph replaces with one; compiling would cost more start-up time than it saves over 5000 short steps
compile = False
cuda_graph = True  # without a CUDA device (or in float16) the step runs without it
