"""The tiny SmolVLM directory (config, tokenizer, processor; no weights) that `model.source = "tiny"`
builds SmolVLA on, generated deterministically on first use and cached on disk, so it runs offline on a CPU.

SmolVLA reads `vlm_model_name` with AutoConfig/AutoProcessor even without weights; a local directory keeps
that offline. The tokenizer is trained on the demo's task strings (zk0/demo_tasks.py), so the policy
builder needs the demo's language but not its data generator.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast
from transformers.models.smolvlm import (
    SmolVLMConfig,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
)

from zk0.demo_tasks import demo_tasks
from zk0.generated_dirs import is_complete, staging, write_marker

GENERATOR_VERSION = 1  # in the marker: bump it when the assets change (demo_tasks' strings included)

VLM_IMAGE_SIZE = 32
VLM_PATCH_SIZE = 8
VLM_SCALE_FACTOR = 2
VLM_TEXT_LAYERS = 4


def ensure_vlm_assets(root: Path) -> Path:
    """The tiny SmolVLM directory (config, tokenizer, processor) under `root/vlm`, built once."""
    target = Path(root) / "vlm"
    params = {"generator": GENERATOR_VERSION, "kind": "vlm"}
    if is_complete(target, params):
        return target
    with staging(target) as building:
        _write_vlm_assets(building)
        write_marker(building, params)
    return target


def _write_vlm_assets(staging: Path) -> None:
    """Tokenizer + SmolVLM config + processor, as OFFLINE.md measured works for SmolVLA."""
    tokenizer = _tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=VLM_TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    vision = SmolVLMVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VLM_IMAGE_SIZE,
        patch_size=VLM_PATCH_SIZE,
    )
    config = SmolVLMConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        scale_factor=VLM_SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=len(tokenizer),
    )
    edge = {"longest_edge": VLM_IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=(VLM_IMAGE_SIZE // VLM_PATCH_SIZE) ** 2 // VLM_SCALE_FACTOR**2,
    )
    config.save_pretrained(staging)
    processor.save_pretrained(staging)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE on the demo's task strings; the dict form of extra_special_tokens is what gives
    the tokenizer the fake_image_token_id / global_image_token_id attributes SmolVLA reads."""
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([f"{task}\n" for task in demo_tasks()], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )
