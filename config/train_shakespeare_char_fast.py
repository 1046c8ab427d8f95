# Shakespeare characters, fast: the baby GPT of train_shakespeare_char.py with twice the batch, twice the learning
# rate and a cosine schedule that ends where the run ends. On an H100 it passed the classic recipe's best validation
# loss (1.5779) 38.5 s after launch, where the classic recipe took 68.1 s (README: time to quality).
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_fast.py

out_dir = "out-shakespeare-char-fast"
eval_interval = 250
eval_iters = 200
log_interval = 250
always_save_checkpoint = False  # keep only the best validation loss

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 128  # a step this small waits on kernel launches: 128 sequences take ~15 ms, as 64 do
block_size = 256

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 2e-3
max_iters = 1250  # the data is seen ~40 times: later the model overfits (validation loss rises)
lr_decay_iters = 1250  # the schedule ends with the run
min_lr = 2e-4  # learning_rate / 10
beta2 = 0.99
warmup_iters = 100

compile = False  # eager starts training 30 s sooner; compiling would save ~3 ms/iter, 4 s over this run
