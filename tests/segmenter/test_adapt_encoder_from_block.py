"""--adapt_encoder_from_block N (a setting added through meta.settings' table alone): the encoder's
blocks before N keep the init's weights in the API, on the command line and in meta-training;
the setting is saved, reloaded and overridden like any other."""
import os

import numpy as np
import pytest

from errors import UserError
from meta.adaptation import Adaptation
from meta.inner import InnerLoop
from models.build import build_model
from models.config import ModelConfig
from models.parts import encoder_block, variables_from_block
from run_metasegnet import main
from segmenter import from_checkpoint
from tests.fixtures.meta_fixtures import cross_entropy
from tests.segmenter.test_segmenter_api import examples, run  # noqa: F401
from tests.segmenter.test_segment_cli import _folder


def _by_block(seg):
    """Variable path -> (encoder block, value) of every trainable variable."""
    return {v.path: (encoder_block(v.path), np.array(v.numpy()))
            for v in seg.model.trainable_variables}


def test_blocks_before_n_keep_the_init_and_the_rest_adapt(run):  # noqa: F811
    seg = from_checkpoint(run, adapt_encoder_from_block=2, steps=3)
    assert seg.settings.adapt.adapt_encoder_from_block == 2
    assert seg.settings.sources["adapt_encoder_from_block"] == "given"
    before = _by_block(seg)
    seg.fit(*examples([(40, 36), (29, 51)]))
    after = _by_block(seg)
    moved = {path for path in before if not np.array_equal(before[path][1], after[path][1])}
    kept = {path for path, (block, _) in before.items() if block == 1}
    assert kept and not kept & moved  # the U-Net's first stack is the init's
    assert any(before[p][0] == 2 for p in moved) and any(before[p][0] is None for p in moved)
    # Saved with the weights, read back as a setting of the init; typed again, it overrides.
    saved = seg.save(os.path.join(os.path.dirname(run), "from_block_2"))
    reloaded = from_checkpoint(saved)
    assert reloaded.settings.adapt.adapt_encoder_from_block == 2
    every = from_checkpoint(saved, adapt_encoder_from_block=0)
    assert len(every.loop.variables) == len(every.model.trainable_variables) > \
        len(reloaded.loop.variables)


def test_a_block_the_model_lacks_or_a_bad_value_is_refused(run):  # noqa: F811
    with pytest.raises(ValueError, match="adapt_encoder_from_block 3: model 'unet' has encoder "
                                         "blocks 1..2"):
        from_checkpoint(run, adapt_encoder_from_block=3)
    with pytest.raises(UserError, match="adapt_encoder_from_block must be a whole number >= 0"):
        Adaptation(adapt_encoder_from_block=-1)


def test_efficientlab_blocks_and_the_inner_loop():
    model = build_model(ModelConfig(image_size=64, rsd=(2, 4)))
    counts = [len(variables_from_block(model, n)) for n in range(6)]
    assert counts[0] == counts[1] + 3 == len(model.trainable_variables)  # stem: conv + BN
    assert counts == sorted(counts, reverse=True) and counts[5] > 0
    loop = InnerLoop(model, cross_entropy, Adaptation(adapt_encoder_from_block=4))
    assert {encoder_block(v.path) for v in loop.variables} == {4, 5, None}
    with pytest.raises(ValueError, match="built for other settings"):
        loop.check(Adaptation())  # another set of adapted variables needs another loop


def test_the_command_line_overrides_the_init_with_it(run, tmp_path, capsys):  # noqa: F811
    folder = _folder(tmp_path / "squares")
    assert main(["--fine-tune-task", str(folder), "--checkpoint", run, "--eval-iters", "2",
                 "--adapt_encoder_from_block", "2"]) == 0
    assert "--adapt_encoder_from_block 2 overrides the init's 0" in capsys.readouterr().out
    seg = from_checkpoint(str(folder / "fine_tuned_checkpoint"))
    assert seg.settings.adapt.adapt_encoder_from_block == 2


def test_meta_training_leaves_them_as_they_are():
    from meta.algorithms import MetaLearner
    from meta.config import MetaConfig
    from tests.fixtures.meta_fixtures import toy_tasks
    model = build_model(ModelConfig(model_name="unet", image_size=32, n_unet_encoding_stacks=2,
                                    start_num_feature_maps_power=2))
    inner = Adaptation(steps=2, batch_size=2, learning_rate=0.05, adapt_encoder_from_block=2)
    learner = MetaLearner(InnerLoop(model, cross_entropy, inner),
                          MetaConfig(train_shots=3, meta_batch_size=2, inner=inner))
    before = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
    learner.meta_step(list(toy_tasks(2, n=4).values()), np.random.default_rng(0), 1.0)
    moved = {v.path for v in model.trainable_variables
             if not np.array_equal(before[v.path], v.numpy())}
    assert moved and all(encoder_block(p) != 1 for p in moved)
    assert any(encoder_block(p) == 2 for p in moved)
