"""Tiny random Hugging Face language models, shared by the tests and by the LXT oracle (which runs in an environment
with transformers 4.x and nothing else of the test suite's)."""
import torch
import transformers


def language_model(family, implementation):
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          attn_implementation=implementation)
        return transformers.LlamaForCausalLM(config)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                         bos_token_id=0, eos_token_id=0, attn_implementation=implementation)
        return transformers.GPT2LMHeadModel(config)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32,
                                     attn_implementation=implementation)
    return transformers.BertForSequenceClassification(config)
