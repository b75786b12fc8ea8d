"""Tiny random-initialised checkpoints of the real architectures, saved with
save_pretrained into a folder, so the blocks' real loading and inference code runs on them."""

from __future__ import annotations

from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character table (the first 512 entries of its vocab)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_clip_tokenizer(folder: Path) -> int:
    """A character-level CLIP BPE tokenizer (no merges); returns the vocab size."""
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab=vocab, merges=[], pad_token="!").save_pretrained(folder)
    return len(vocab)


def make_owl(folder: Path, v2: bool = False, seed: int = 0, image_size: int = 96, patch: int = 16,
             full_size: bool = False) -> Path:
    """A tiny OWL-ViT (or OWLv2) detector with tokenizer and image processor in ``folder``.
    ``full_size``: the published base architecture instead (OWL-ViT B/32 at 768 px, OWLv2
    B/16 at 960 px) with random weights: the same compute as the trained model."""
    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    vocab = write_clip_tokenizer(folder)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0,
                max_position_embeddings=16)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch)
    if full_size:
        text = dict(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0)
        image_size, patch = (960, 16) if v2 else (768, 32)
        vision = dict(image_size=image_size, patch_size=patch)
    torch.manual_seed(seed)
    if v2:
        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision,
                                                    **({} if full_size else {"projection_dim": 32})))
        image_processor = Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
        processor_cls = Owlv2Processor
    else:
        model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision,
                                                      **({} if full_size else {"projection_dim": 32})))
        image_processor = OwlViTImageProcessor(size={"height": image_size, "width": image_size},
                                               crop_size={"height": image_size, "width": image_size})
        processor_cls = OwlViTProcessor
    # heads scaled like trained ones: boxes near their patches, scores spread over 0.2-0.8
    with torch.no_grad():
        width = model.config.vision_config.hidden_size ** -0.5
        for layer, std in ((model.box_head.dense0, width), (model.box_head.dense1, width),
                           (model.box_head.dense2, 0.3 * width), (model.class_head.dense0, width),
                           (model.class_head.logit_shift, 0.1 * width), (model.class_head.logit_scale, 0.1 * width)):
            layer.weight.normal_(0.0, std)
            layer.bias.zero_()
        model.class_head.logit_scale.bias.fill_(3.0)
    model.eval().save_pretrained(folder)
    from transformers import AutoTokenizer

    processor_cls(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(folder)).save_pretrained(folder)
    return folder


AUDIOSET_CLASSES = ["Speech", "Dog", "Bark", "Music", "Vehicle", "Car alarm", "Silence",
                    "Bird vocalization, bird call, bird song"]


def make_ast(folder: Path, seed: int = 0, full_size: bool = False) -> Path:
    """A tiny Audio Spectrogram Transformer classifier over a few AudioSet class names, with its
    feature extractor, in ``folder``. ``full_size``: the published AudioSet architecture (1024
    frames x 128 mel bins, 527 classes) with random weights."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    if full_size:
        names = AUDIOSET_CLASSES + [f"AudioSet class {i}" for i in range(527 - len(AUDIOSET_CLASSES))]
        config = ASTConfig(num_labels=527)
        extractor = ASTFeatureExtractor()
    else:
        names = AUDIOSET_CLASSES
        # 208 frames of 10 ms: a 2 s window fits whole
        config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           num_mel_bins=16, max_length=208, num_labels=len(names))
        extractor = ASTFeatureExtractor(num_mel_bins=16, max_length=208)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    torch.manual_seed(seed)
    model = ASTForAudioClassification(config).eval()
    if not full_size:
        with torch.no_grad():  # scores spread over 0..1 so thresholds and "other" both occur
            model.classifier.dense.weight.normal_(0.0, 2.0 / config.hidden_size**0.5)
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


def make_clip(folder: Path, seed: int = 0, full_size: bool = False) -> Path:
    """A tiny CLIP (image and text towers, projection 16) with its processor in ``folder``.
    ``full_size``: the published ViT-B/32 architecture with random weights."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    vocab = write_clip_tokenizer(folder)
    text = dict(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0)
    if full_size:
        config = CLIPConfig(text_config=text)
        size = 224
    else:
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    max_position_embeddings=16)
        size = 32
        config = CLIPConfig(text_config=text, vision_config=dict(hidden_size=32, intermediate_size=64,
                                                                 num_hidden_layers=2, num_attention_heads=2,
                                                                 image_size=size, patch_size=8),
                            projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                                 crop_size={"height": size, "width": size}),
                              tokenizer=AutoTokenizer.from_pretrained(folder))
    processor.save_pretrained(folder)
    return folder


def make_vit(folder: Path, labels: tuple[str, ...] = ("cat", "dog", "bird", "car"), seed: int = 0) -> Path:
    """A tiny ViT image classifier (32x32 input) with its image processor in ``folder``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_yolos(folder: Path, labels: tuple[str, ...] = ("person", "bottle", "car"), seed: int = 0,
               full_size: bool = False) -> Path:
    """A tiny YOLOS detector (64x64 input, 10 detection tokens) with its image processor.
    ``full_size``: YOLOS-small's architecture and preprocessing with random weights."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    kw = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    if full_size:
        config = YolosConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536, image_size=[800, 1333],
                             use_mid_position_embeddings=False,
                             num_detection_tokens=100, **kw)
        processor = YolosImageProcessor()  # YOLOS' own sizes: shortest edge 800, longest 1333
    else:
        config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=[64, 64], patch_size=16, num_detection_tokens=10, **kw)
        processor = YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    torch.manual_seed(seed)
    YolosForObjectDetection(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
