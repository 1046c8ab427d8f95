# GPT-3's attention pattern (Brown et al. 2020, from the Sparse Transformer, Child et al. 2019): dense layers
# alternating with locally banded ones. The paper gives no band width; without a window_size the banded layers
# attend to the last block_size // 4 tokens. An overlay: it sets the architecture only, after any recipe, e.g.
# python train.py config/train_shakespeare_char.py config/arch/gpt3.py --out_dir=out-shakespeare-char-gpt3
# Flex attention has no dropout: while dropout is on, the banded layers train through SDPA with the explicit band
# mask (the same result, without the banded kernel's saving).

attn_pattern = "alternating"  # layers 2, 4, 6, ... attend only to the last window_size tokens
