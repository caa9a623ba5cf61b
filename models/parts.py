"""The encoder's blocks of each network, by layer name: what an adaptation may leave as it is.

EfficientLab's encoder is EfficientNet's stem (`stem_*`, block 0 here) and its blocks
(`block<k><letter>_*`, k = 1..5 up to the stride-16 endpoint of B0 and B3); the U-Nets' encoder
is their stacks (`enc<k>_*`, k = 1..--n_unet_encoding_stacks). Everything else (the decoder, the
head, a U-Net's middle block) belongs to no encoder block.
"""
from __future__ import annotations

import re

import keras

_BLOCK = re.compile(r"^(?:(stem)_|block(\d+)[a-z]_|enc(\d+)_)")


def encoder_block(path: str) -> int | None:
    """The encoder block a variable belongs to: 0 for EfficientNet's stem, k for block or stack
    k, None outside the encoder.

    Args:
        path: the variable's path (its first part is its layer's name).

    Returns:
        the block number, or None.
    """
    found = _BLOCK.match(path)
    if found is None:
        return None
    stem, block, stack = found.groups()
    return 0 if stem else int(block or stack)


def variables_from_block(model: keras.Model, first_block: int) -> list:
    """The trainable variables but those of the encoder's blocks before `first_block`.

    Args:
        model: a model from models.build.build_model.
        first_block: the first encoder block to keep (0 or 1 with no stem: every variable).

    Returns:
        the variables, in the model's order.

    Raises:
        ValueError: first_block beyond the model's last encoder block.
    """
    variables = list(model.trainable_variables)
    if first_block <= 0:
        return variables
    blocks = [encoder_block(v.path) for v in variables]
    last = max((b for b in blocks if b is not None), default=0)
    if first_block > last:
        raise ValueError(f"adapt_encoder_from_block {first_block}: model {model.name!r} has "
                         f"encoder blocks 1..{last}; pass at most {last} (0 adapts every weight).")
    return [v for v, b in zip(variables, blocks) if b is None or b >= first_block]
