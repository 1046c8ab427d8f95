# Finetune OpenAI's GPT-2 XL on the BPE-tokenized Shakespeare text (needs init_from=gpt2* support: transformers).
# python data/shakespeare/prepare.py && python train.py config/finetune_shakespeare.py

out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = "shakespeare"
wandb_run_name = "ft-gpt2-xl"

dataset = "shakespeare"
init_from = "gpt2-xl"  # the largest GPT-2

always_save_checkpoint = False  # keep only the best validation loss

# 1 sequence x 32 steps x 1024 tokens = 32,768 tokens per iteration; one epoch of ~302k tokens is ~9 iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at a constant small learning rate
learning_rate = 3e-5
decay_lr = False
