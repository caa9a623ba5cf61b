"""Every random stream of a run, one table: `np.random.default_rng([seed, STREAM, ...])`.

One --seed fixes them all, and each is independent of the others, so an evaluation never moves
the training trajectory and any two inits are scored on the same episodes. The own-image
fine-tuning keys its generator by [seed, number of support pairs] instead (adapt/own_images.py).
"""
STREAM_TRAINING = 0  # meta-training's meta-batches and inner mini-batches; joint/pre-training
STREAM_TEST = 1  # the final evaluation on the held-out (test or val) classes
STREAM_TRAIN = 2  # the final evaluation's few train tasks
STREAM_MONITOR = 3  # the periodic monitor, keyed further by (meta-iteration, split)
STREAM_UHO = 4  # UHO's val episodes (adapt/uho_objective.py)
STREAM_KSHOT = 5  # the k-shot learning curves (adapt/kshot.py)
STREAM_PRETRAIN = 6  # MTL pre-training's per-epoch val episodes (baselines/pretrain.py)
STREAM_META_FINE_TUNE = 7  # meta-fine-tuning on train + val after UHO (modes/experiments.py)
STREAM_HSNET = 8  # the one-episode-per-query protocol (adapt/protocol_hsnet.py)
