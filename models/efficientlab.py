"""EfficientLab: truncated EfficientNet encoder, light residual skip decoder (ml4ai/mliis
models/efficientlab.py).

The encoder is Keras' own EfficientNet (`keras.applications`, weights=None), cut after the stage
that reaches stride 16; skip features are read from it by layer name (`EFFICIENTNET_SKIPS`), so the
model is one flat functional graph whose backbone layers keep Keras' names (`stem_conv`,
`block2a_expand_conv`, ...), which the TF1-checkpoint loader and the ImageNet restore map onto.
For each reduction in `--rsd`, deepest first, a residual skip-decoder (RSD) module fuses the current
features with that reduction's skip; a 2-channel head with a variable-rate dropout follows.
"""
from __future__ import annotations

import keras
from keras import layers

from models.config import ModelConfig
from models.layers import (IMAGENET_MEAN, IMAGENET_STD, ResizeBilinear, TrainingBatchNormalization,
                           segmentation_head)

APPLICATIONS = {"efficientnet-b0": keras.applications.EfficientNetB0,
                "efficientnet-b3": keras.applications.EfficientNetB3}
# Reference endpoints reduction_1..4 (strides 2, 4, 8, 16) as Keras layer names (ml4ai/mliis
# models/efficientnet/efficientnet_builder.py):
# the last block before each stride-2 block, and the end of the 112/136-channel stage.
EFFICIENTNET_SKIPS = {
    "efficientnet-b0": {1: "block1a_project_bn", 2: "block2b_add", 3: "block3b_add",
                        4: "block5c_add"},
    "efficientnet-b3": {1: "block1b_add", 2: "block2c_add", 3: "block3c_add", 4: "block5e_add"},
}
DECODER_CHANNELS = {"efficientnet-b0": 112, "efficientnet-b3": 136}  # the reference's F
# Drop-connect: Keras uses 0.2 * b / (blocks of the full net), the reference 0.2 * b / (blocks it
# builds): 11 for the truncated B0, all 26 for B3 (its truncation rule keeps every block).
KERAS_NUM_BLOCKS = {"efficientnet-b0": 16, "efficientnet-b3": 26}
REFERENCE_NUM_BLOCKS = {"efficientnet-b0": 11, "efficientnet-b3": 26}
DROP_CONNECT_RATE = 0.2
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99  # tf.layers defaults of the reference decoder
SPP_DROPOUT = 0.5
SPP_DILATION = 6


def build_backbone(cfg: ModelConfig, inputs):
    """The truncated EfficientNet on `inputs`, normalizing RGB in [0, 255] with ImageNet mean/std.

    Keras' application starts with Rescaling(1/255) and an adaptable Normalization whose mean and
    variance are variables that it copies into constants when (re)built or loaded; such a layer can
    silently compute with other values than it saves. We clone the application's truncated graph
    onto `inputs` (`clone_model`, same layer classes, configs and names) with a constant ImageNet
    Normalization in its place, so the model normalizes exactly once, with values that live in its
    config, and nothing after the stride-16 endpoint is part of the graph.

    Args:
        cfg: model config (feature_extractor_name, image_size).
        inputs: the (None, S, S, 3) keras.Input.
    Returns:
        {reduction (1..4): feature tensor}, read from the application's layers by name.
    """
    name = cfg.feature_extractor_name
    size = (cfg.image_size, cfg.image_size, 3)
    app = APPLICATIONS[name](include_top=False, weights=None, input_shape=size)
    set_drop_connect_rates(app, name)
    reductions = sorted(EFFICIENTNET_SKIPS[name])
    truncated = keras.Model(app.input,
                            [app.get_layer(EFFICIENTNET_SKIPS[name][r]).output for r in reductions])

    def rewire(layer):
        if isinstance(layer, layers.Rescaling):
            return layers.Rescaling(1.0 / 255.0, name="input_rescaling")
        if isinstance(layer, layers.Normalization):
            return layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD],
                                        name="input_normalization")
        # a fresh copy, so each layer has one inbound node and `model.get_layer(n).output` works
        return layer.__class__.from_config(layer.get_config())

    encoder = keras.models.clone_model(truncated, input_tensors=inputs, clone_function=rewire)
    skips = dict(zip(reductions, encoder.outputs))
    for r, x in skips.items():  # the table above is data: check it against the real network
        assert x.shape[1] == cfg.image_size // 2 ** r, (name, r, x.shape)
    return skips


def set_drop_connect_rates(app: keras.Model, name: str) -> None:
    """Give the application's drop-connect layers the reference rates 0.2 * b / blocks built.

    Keras builds block b with rate 0.2 * b / (blocks of the full network); the reference divides
    by the blocks it builds (11 for the truncated B0, so e.g. block5c drops 0.182, not 0.125).
    Equivalent to the application's drop_connect_rate=0.2 * 16 / 11, which only the private
    `EfficientNet` builder takes; the rate is part of each Dropout's config, so clones keep it.

    Args:
        app: a keras.applications EfficientNet.
        name: "efficientnet-b0" or "efficientnet-b3".
    """
    blocks = sorted({layer.name.split("_")[0] for layer in app.layers
                     if layer.name.startswith("block") and layer.name.endswith("_project_conv")},
                    key=lambda block: (int(block[5:-1]), block[-1]))
    assert len(blocks) == KERAS_NUM_BLOCKS[name], (name, len(blocks))
    for b, block in enumerate(blocks):
        for layer in app.layers:
            if layer.name == f"{block}_drop":
                layer.rate = DROP_CONNECT_RATE * b / REFERENCE_NUM_BLOCKS[name]


def conv_swish_bn(x, filters: int, kernel: int, name: str, dilation: int = 1):
    """The reference decoder's C(x): conv with bias -> swish -> batch norm (BN after swish).

    Args:
        x: input tensor.
        filters: output channels.
        kernel: square kernel size.
        name: layer-name prefix; layers `{name}_conv`, `{name}_swish`, `{name}_bn`.
        dilation: dilation rate.
    Returns:
        the output tensor.
    """
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation,
                      name=f"{name}_conv")(x)
    x = layers.Activation("swish", name=f"{name}_swish")(x)
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)


def residual_skip_decoder(z, skip, reduction: int, filters: int, cfg: ModelConfig):
    """One RSD module: upsample z to the skip, fuse three branches, add the upsampled z back.

    Args:
        z: current decoder features.
        skip: the encoder's reduction_`reduction` features.
        reduction: 1..4; names the layers `rsd{reduction}_*`.
        filters: output channels F.
        cfg: model config (align_corners, disable_rsd_residual_connections).
    Returns:
        (N, h, w, F) at the skip's resolution.
    """
    p = f"rsd{reduction}"
    size = tuple(skip.shape[1:3])
    up = ResizeBilinear(size, align_corners=cfg.align_corners, name=f"{p}_upsample")(z)
    cat = layers.Concatenate(name=f"{p}_concat")([up, skip])
    b0 = conv_swish_bn(cat, filters, 1, f"{p}_b0")
    b1 = conv_swish_bn(cat, filters, 3, f"{p}_b1", dilation=2)
    # image-level features: the spatial mean of `cat`, tiled back (no conv, as the reference)
    b2 = layers.GlobalAveragePooling2D(keepdims=True, name=f"{p}_image_mean")(cat)
    b2 = layers.UpSampling2D(size, name=f"{p}_image_tile")(b2)
    pyr = layers.Concatenate(name=f"{p}_pyramid")([b0, b1, b2])
    out = conv_swish_bn(pyr, filters, 3, f"{p}_fuse")
    if cfg.disable_rsd_residual_connections:
        return out
    if up.shape[-1] != filters:
        up = conv_swish_bn(up, filters, 1, f"{p}_residual")
    return layers.Add(name=f"{p}_add")([out, up])


def spatial_pyramid_pooling(x, filters: int, cfg: ModelConfig):
    """The reference's optional atrous pyramid on the embedded map (dropout 0.5 throughout).

    Args:
        x: the encoder output (stride 16).
        filters: output channels F.
        cfg: model config (align_corners).
    Returns:
        (N, h, w, F).
    """
    def conv_swish_dropout(t, kernel, name, dilation=1):
        t = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation,
                          name=f"{name}_conv")(t)
        t = layers.Activation("swish", name=f"{name}_swish")(t)
        return layers.Dropout(SPP_DROPOUT, name=f"{name}_dropout")(t)

    a = conv_swish_dropout(x, 1, "spp_b0")
    b = conv_swish_dropout(x, 3, "spp_b1", dilation=SPP_DILATION)
    c = layers.GlobalAveragePooling2D(keepdims=True, name="spp_pool_mean")(x)
    c = layers.Conv2D(filters, 1, name="spp_pool_conv")(c)
    c = layers.Dropout(SPP_DROPOUT, name="spp_pool_dropout")(c)
    c = layers.Activation("swish", name="spp_pool_swish")(c)
    c = ResizeBilinear(tuple(x.shape[1:3]), align_corners=cfg.align_corners,
                       name="spp_pool_resize")(c)
    cat = layers.Concatenate(name="spp_concat")([c, b, a])
    return conv_swish_dropout(cat, 1, "spp_fuse")


def skip_decoder(x, skip, filters: int, cfg: ModelConfig):
    """DeepLab-v3+-style decoder: fuse x (upsampled) with a projected reduction_2 skip.

    Its batch norms always use batch statistics (the reference ran them in training mode), so this
    path is transductive at prediction time.

    Args:
        x: current decoder features.
        skip: reduction_2 features (stride 4).
        filters: F; the output has F + F // 2 channels.
        cfg: model config (align_corners).
    Returns:
        (N, S/4, S/4, F + F // 2).
    """
    def bn(name):
        return TrainingBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)

    up = ResizeBilinear(tuple(skip.shape[1:3]), align_corners=cfg.align_corners,
                        name="skipdec_upsample")(x)
    s = layers.Conv2D(filters // 2, 1, use_bias=False, name="skipdec_skip_conv")(skip)
    s = layers.Activation("swish", name="skipdec_skip_swish")(bn("skipdec_skip_bn")(s))
    y = layers.Concatenate(name="skipdec_concat")([up, s])
    for j in (1, 2):
        p = f"skipdec_sep{j}"
        y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{p}_dwconv")(y)
        y = layers.Activation("swish", name=f"{p}_dw_swish")(bn(f"{p}_dw_bn")(y))
        y = layers.Conv2D(filters + filters // 2, 1, use_bias=False, name=f"{p}_pwconv")(y)
        y = layers.Activation("swish", name=f"{p}_pw_swish")(bn(f"{p}_pw_bn")(y))
    return y


def build_efficientlab(cfg: ModelConfig) -> keras.Model:
    """EfficientLab: truncated EfficientNet, optional pyramid, RSD modules, 2-channel head.

    Decoder order (ml4ai/mliis models/efficientlab.py `decode`): `--spatial_pyramid_pooling` on the
    encoder output, then `--skip_decoding` (to stride 4), then one RSD module per `--rsd`
    reduction (deepest first; after the skip decoder the first one resizes down to its skip),
    then the head.

    Args:
        cfg: model config with model_name "efficientlab".
    Returns:
        keras.Model "efficientlab": (None, S, S, 3) RGB in [0, 255] -> (None, S, S, 2) softmax.
    """
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    skips = build_backbone(cfg, inputs)
    filters = DECODER_CHANNELS[cfg.feature_extractor_name]
    x = skips[4]
    if cfg.spatial_pyramid_pooling:
        x = spatial_pyramid_pooling(x, filters, cfg)
    if cfg.skip_decoding:
        x = skip_decoder(x, skips[2], filters, cfg)
    for reduction in sorted(cfg.rsd, reverse=True):
        x = residual_skip_decoder(x, skips[reduction], reduction, filters, cfg)
    # reference head init: normal(0, sqrt(2 / fan_out)), fan_out = 1 * 1 * 2 -> std 1 (ml4ai/mliis
    # models/efficientlab.py)
    head_init = keras.initializers.RandomNormal(stddev=(2.0 / 2) ** 0.5)
    outputs = segmentation_head(x, cfg, kernel_initializer=head_init)
    return keras.Model(inputs, outputs, name="efficientlab")
