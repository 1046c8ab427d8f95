# GPT-1's block (Radford et al. 2018): post-norm (normalise after each residual add, no final norm), biases.
# An overlay: it sets the architecture only, after any recipe, e.g.
# python train.py config/train_shakespeare_char.py config/arch/gpt1.py --out_dir=out-shakespeare-char-gpt1

post_norm = True
bias = True
