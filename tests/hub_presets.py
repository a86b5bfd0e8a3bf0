"""Tiny random KerasHub presets, saved as preset folders (``save_to_preset``): the same files and
the same loading path as a downloaded preset, small enough for a test."""

from __future__ import annotations

from pathlib import Path


def _converter(cls, size, scale, offset, folder):
    conv = cls(image_size=(size, size), scale=scale, offset=offset)
    conv.save_to_preset(str(folder))


def make_presets(root: Path) -> dict[str, Path]:
    """``{kind: folder}`` of a tiny DINOv2 (with a register token), ViT, CLIP, SigLIP, ResNet, DeiT, Swin and DINOv3."""
    import keras
    import keras_hub.layers as HL
    import keras_hub.models as M

    keras.utils.set_random_seed(0)
    root = Path(root)
    out = {}
    std = [1 / (255 * s) for s in (0.229, 0.224, 0.225)]
    mean = [-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]

    b = M.DINOV2Backbone(patch_size=4, num_layers=3, hidden_dim=16, num_heads=2, intermediate_dim=32,
                         num_register_tokens=1, image_shape=(32, 32, 3), position_embedding_shape=(32, 32, 3))
    out["dinov2"] = root / "tiny_dinov2"
    b.save_to_preset(str(out["dinov2"]))
    _converter(HL.DINOV2ImageConverter, 32, std, mean, out["dinov2"])

    b = M.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    out["vit"] = root / "tiny_vit"
    b.save_to_preset(str(out["vit"]))
    _converter(HL.ViTImageConverter, 32, 1 / 127.5, -1.0, out["vit"])

    vision = M.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                                 image_shape=(32, 32, 3))
    text = M.CLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                             intermediate_dim=32, max_sequence_length=8)
    b = M.CLIPBackbone(vision, text, projection_dim=12)
    out["clip"] = root / "tiny_clip"
    b.save_to_preset(str(out["clip"]))
    _converter(HL.CLIPImageConverter, 32, std, mean, out["clip"])

    vision = M.SigLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                                   image_shape=(32, 32, 3))
    text = M.SigLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                               intermediate_dim=32, max_sequence_length=8)
    b = M.SigLIPBackbone(vision, text)
    out["siglip"] = root / "tiny_siglip"
    b.save_to_preset(str(out["siglip"]))
    _converter(HL.SigLIPImageConverter, 32, 1 / 127.5, -1.0, out["siglip"])

    b = M.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
                         stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
                         use_pre_activation=False, image_shape=(None, None, 3))
    out["resnet"] = root / "tiny_resnet"
    b.save_to_preset(str(out["resnet"]))
    _converter(HL.ResNetImageConverter, 32, std, mean, out["resnet"])

    b = M.DeiTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                       intermediate_dim=32)  # class and distillation tokens
    out["deit"] = root / "tiny_deit"
    b.save_to_preset(str(out["deit"]))
    _converter(HL.DeiTImageConverter, 32, std, mean, out["deit"])

    b = M.SwinTransformerBackbone(image_shape=(32, 32, 3), embed_dim=8, depths=[1, 1], num_heads=[2, 2],
                                  window_size=2, patch_size=4)  # no class token; 4x4 tokens at the end
    out["swin"] = root / "tiny_swin"
    b.save_to_preset(str(out["swin"]))
    _converter(HL.SwinTransformerImageConverter, 32, std, mean, out["swin"])

    b = M.DINOV3Backbone(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                         image_shape=(32, 32, 3))  # 4 register tokens
    out["dinov3"] = root / "tiny_dinov3"
    b.save_to_preset(str(out["dinov3"]))
    _converter(HL.DINOV3ImageConverter, 32, std, mean, out["dinov3"])
    return out
