# LLaMA's block (Touvron et al. 2023): RMSNorm, SwiGLU, rotary positions, grouped-query attention (LLaMA 2), no
# biases, an untied output head. An overlay: it sets the architecture only, after any recipe, e.g.
# python train.py config/train_shakespeare_char.py config/arch/llama.py --out_dir=out-shakespeare-char-llama

norm = "rmsnorm"
mlp = "swiglu"
pos_emb = "rope"
n_kv_head = 2  # key/value heads shared by the query heads: n_head must be a multiple of it
bias = False
tie_embeddings = False
