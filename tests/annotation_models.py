"""Tiny random-weight captioning, detection and segmentation models, saved as transformers folders.

The vocabulary is nouns and a few function words, so that random captions hold nouns the tagger
finds; the labels mean nothing, the plumbing is real.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "cup", "table", "clock"]
WORDS += ["coin", "rocket", "camera", "man", "grass", "tree", ".", ",", "a", "on", "the", "and"]
PAD, UNK, CLS, SEP = range(4)
HIDDEN = 32
IMAGE = 64


def tokenizer(folder: Path) -> transformers.BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS))
    return transformers.BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)


def text_config(**extra) -> dict:
    return dict(
        vocab_size=len(WORDS),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=IMAGE,
        **extra,
    )


def save_blip(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.BlipConfig(
        text_config=text_config(
            bos_token_id=CLS,
            sep_token_id=SEP,
            eos_token_id=SEP,
            pad_token_id=PAD,
            encoder_hidden_size=HIDDEN,
        ),
        vision_config=dict(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=HIDDEN,
    )
    transformers.BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    transformers.BlipProcessor(image_processor, tokenizer(folder)).save_pretrained(folder)
    return folder


def save_grounding_dino(folder: Path) -> Path:
    torch.manual_seed(1)
    config = transformers.GroundingDinoConfig(
        backbone_config=transformers.SwinConfig(
            image_size=IMAGE,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 1],
            window_size=4,
            out_features=["stage1", "stage2"],
        ),
        text_config=transformers.BertConfig(**text_config()),
        d_model=HIDDEN,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=HIDDEN,
        decoder_ffn_dim=HIDDEN,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=6,
        num_feature_levels=2,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=32,
        use_pretrained_backbone=False,
        backbone=None,
    )
    transformers.GroundingDinoForObjectDetection(config).eval().save_pretrained(folder)
    image_processor = transformers.GroundingDinoImageProcessor(
        size={"shortest_edge": IMAGE, "longest_edge": 96}
    )
    transformers.GroundingDinoProcessor(image_processor, tokenizer(folder)).save_pretrained(folder)
    return folder


def save_sam(folder: Path) -> Path:
    torch.manual_seed(2)
    config = transformers.SamConfig(
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_dim=32,
            image_size=IMAGE,
            patch_size=8,
            output_channels=16,
            window_size=2,
            global_attn_indexes=[0],
            num_pos_feats=8,
        ),
        prompt_encoder_config=dict(
            hidden_size=16, image_size=IMAGE, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=16,
            mlp_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=16,
        ),
    )
    transformers.SamModel(config).eval().save_pretrained(folder)
    transformers.SamProcessor(
        transformers.SamImageProcessor(
            size={"longest_edge": IMAGE},
            pad_size={"height": IMAGE, "width": IMAGE},
            mask_size={"longest_edge": 16},
            mask_pad_size={"height": 16, "width": 16},
        )
    ).save_pretrained(folder)
    return folder


def save_all(folder: Path) -> dict[str, Path]:
    return {
        "captioner": save_blip(folder / "blip"),
        "detector": save_grounding_dino(folder / "grounding_dino"),
        "segmenter": save_sam(folder / "sam"),
    }
