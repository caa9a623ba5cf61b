"""Command line of run_metasegnet.py, turned once into frozen config dataclasses.

Every flag of the paper's `run_metasegnet.py` is accepted (dashes and underscores as the
original spells them), plus the flags this project adds. `parse_args(argv)` returns a
`Config`; library code only ever sees the dataclasses inside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass

from adapt.config import EvalConfig, KShotConfig, UHOConfig
from baselines.config import MTLConfig
from data.multiclass import check_num_classes
from devices.config import DeviceConfig
from errors import UserError
from meta.adaptation import FIELDS, Adaptation, head_adaptation
from meta.config import MetaConfig
from meta.settings import SETTINGS, flag
from meta.streams import ONE_STREAM, PER_TASK, TASK_STREAMS
from models.config import IMAGENET, LossConfig, ModelConfig

MASK_FORMATS = ("png", "overlay", "coco", "yolo", "label_studio")  # segmenter.outputs.FORMATS


class _OneLineParser(argparse.ArgumentParser):
    """Reports bad or contradictory flags as one line on stderr (exit 2), no usage dump."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how classes are split into meta-train / val / test."""

    data_dir: str | None = None
    image_size: int = 224
    fss_1000: bool = False
    test_tasks_file: str | None = None
    num_test_tasks: int = 0
    num_val_tasks: int = 0
    fp_k_test_set: bool = False
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """What this invocation does and where it writes."""

    checkpoint: str = "model_checkpoint"
    pretrained: bool = False
    continue_training_from_checkpoint: str | None = None
    do_not_restore_final_layer_weights: bool = False
    export: str | None = None  # --export (or --export_keras): where the loaded model goes
    export_format: str = "keras"
    fine_tune_task: str | None = None
    fine_tuned_checkpoint: str | None = None
    query_dir: str | None = None  # the images to segment (default: DIR/query)
    masks_dir: str | None = None  # where their masks go (default: DIR/predictions)
    mask_format: tuple[str, ...] = ("png",)
    query_masks: str | None = None
    restart: bool = False
    optimize_update_hyperparms_on_val_set: bool = False
    run_k_shot_learning_curves_experiment: bool = False
    joint_train: bool = False
    joint_train_epochs: int = 10
    compare_random_init: bool = False
    mtl: bool = False  # --phase given: the meta-transfer-learning pipeline
    serve: bool = False
    label_studio: bool = False  # --label_studio: Label Studio's ML backend
    host: str = "127.0.0.1"
    port: int = 7860
    serve_dir: str = "serve_output"
    serve_keep_hours: float = 24.0
    given_flags: tuple[str, ...] = ()  # dests of the flags typed on the command line


@dataclass(frozen=True)
class Config:
    """Everything one run needs, resolved from the command line."""

    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    adapt: Adaptation  # test-time adaptation; meta-training's inner loop is meta.inner
    meta: MetaConfig
    eval: EvalConfig
    uho: UHOConfig
    kshot: KShotConfig
    mtl: MTLConfig
    run: RunConfig
    device: DeviceConfig = DeviceConfig()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _add_data_flags(p):
    g = p.add_argument_group("data and splits")
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                   help="directory of TFRecord shards written by fss_1000_image_to_tfrecord.py")
    g.add_argument("--fss_1000", action="store_true", help="FSS-1000 mode: test classes from "
                   "fss_test_set.txt (in or beside --data-dir, else splits/); one UHO objective "
                   "repetition per configuration instead of 4")
    g.add_argument("--image_size", type=int, default=224, help="image side the shards store")
    g.add_argument("--test_tasks_file", default=None,
                   help="file with one meta-test class per line (e.g. FSS-1000's fss_test_set.txt)")
    g.add_argument("--num_test_tasks", type=int, default=0,
                   help="without --test_tasks_file: hold out N random (seeded) classes as "
                        "meta-test")
    g.add_argument("--num_val_tasks", type=int, default=0,
                   help="hold out the N alphabetically last meta-train classes as meta-val")
    g.add_argument("--eval_val_tasks", action="store_true",
                   help="final evaluation on the val classes instead of test")
    g.add_argument("--fp_k_test_set", action="store_true", help="FP-k experiment split")


def _add_model_flags(p):
    g = p.add_argument_group("model")
    g.add_argument("--model_name", default=None, choices=["efficientlab", "unet", "mtl_unet"],
                   help="default: mtl_unet with --phase, else efficientlab")
    g.add_argument("--model_type", default=None, choices=["UNet"],
                   help="MTL-Segmentation's spelling of --model_name mtl_unet")
    g.add_argument("--feature_extractor_name", default="efficientnet-b0",
                   choices=["efficientnet-b0", "efficientnet-b3"],
                   help="the EfficientNet encoder of EfficientLab")
    g.add_argument("--rsd", type=int, nargs="*", default=[2, 4],
                   help="reductions (1-4) that get a residual skip decoder module; "
                        "`--rsd` alone means none")
    g.add_argument("--spatial_pyramid_pooling", action="store_true",
                   help="EfficientLab: a spatial pyramid pooling block before the decoder")
    g.add_argument("--skip_decoding", action="store_true",
                   help="EfficientLab: decode the skip connections before the residual skip "
                        "decoder modules (the reference's --skip_decoding)")
    g.add_argument("--disable_rsd_residual_connections", action="store_true",
                   help="EfficientLab: residual skip decoder modules without their residual "
                        "connection")
    g.add_argument("--no_align_corners", action="store_true",
                   help="half-pixel bilinear resizes instead of TF1 align_corners=True (paper)")
    g.add_argument("--restore_efficient_net_weights_from", default=None,
                   help="ImageNet EfficientNet weights: a Keras .h5 / .weights.h5 file, a TF1 "
                        "checkpoint, or `imagenet` (Keras' file, downloaded once into "
                        "~/.keras/models/)")
    g.add_argument("--n_unet_encoding_stacks", type=int, default=4,
                   help="U-Net: encoding stacks (each halves the resolution)")
    g.add_argument("--start_num_feature_maps_power", type=int, default=5,
                   help="U-Net: the first stack has 2**N feature maps, doubling per stack")
    g.add_argument("--classes", type=int, default=1, help="object classes per task (binary only)")


def _add_loss_flags(p):
    g = p.add_argument_group("loss and regularization")
    g.add_argument("--loss_name", default="cross_entropy",
                   choices=["cross_entropy", "bce_dice", "soft_iou", "dice", "ce_dice", "focal",
                            "lovasz"],
                   help="the segmentation loss of training and adaptation")
    g.add_argument("--label_smoothing", type=float, default=0.0,
                   help="label smoothing of the cross-entropy losses")
    g.add_argument("--l2", action="store_true", help="add 5e-4 * sum(w^2)/2 over non-BN weights")
    g.add_argument("--l1", action="store_true", help="add 5e-4 * sum|w| over non-BN weights")
    g.add_argument("--darc1", action="store_true", help="add the DARC1 term")


def _add_adaptation_flags(p):
    """The adaptation's flags, one per row of meta.settings' table (help and default from the
    fields of meta.adaptation.Adaptation), and --augment, which switches --aug_rate on."""
    g = p.add_argument_group("adaptation (meta-training's inner loop and every test-time "
                             "adaptation; docs/training.md)")
    for name, field in FIELDS.items():
        flags = SETTINGS[name][0]
        if not flags:
            continue
        meta = field.metadata
        default = field.default if meta["flag_default"] is None else meta["flag_default"]
        if isinstance(default, bool):
            g.add_argument(*flags, dest=name, action="store_true", help=meta["help"])
        else:
            g.add_argument(*flags, dest=name, type=type(default), default=default,
                           choices=meta["choices"], help=meta["help"])
    g.add_argument("--augment", action="store_true",
                   help="augment the adaptation's examples (at --aug_rate, with --augmentation)")


def _add_meta_flags(p):
    g = p.add_argument_group("meta (outer) loop and checkpoints")
    g.add_argument("--inner-iters", "--inner_iters", dest="inner_iters", type=int, default=8,
                   help="adaptation steps of each meta-training task")
    g.add_argument("--inner-batch", "--inner_batch", dest="inner_batch", type=int, default=8,
                   help="mini-batch of each meta-training task's adaptation steps")
    g.add_argument("--train-shots", "--train_shots", dest="train_shots", type=int, default=5,
                   help="pairs drawn for each meta-training task")
    g.add_argument("--foml", action="store_true", help="FOMAML instead of Reptile")
    g.add_argument("--foml-tail", "--foml_tail", dest="foml_tail", type=int, default=None,
                   help="FOMAML*: held-out tail shots for the last inner step")
    g.add_argument("--sample_foml_train_val_with_replacement", action="store_true",
                   help="FOMAML*: draw the train part and the tail independently with replacement "
                        "(they may overlap)")
    g.add_argument("--meta-step", "--meta_step", dest="meta_step", type=float, default=0.1,
                   help="meta step size epsilon at the first meta-iteration (annealed linearly to "
                        "--meta-step-final)")
    g.add_argument("--meta-step-final", "--meta_step_final", dest="meta_step_final", type=float,
                   default=0.1,
                   help="meta step size epsilon reached at the last meta-iteration")
    g.add_argument("--meta-batch", "--meta_batch", dest="meta_batch", type=int, default=5,
                   help="tasks per meta-iteration")
    g.add_argument("--meta-iters", "--meta_iters", dest="meta_iters", type=int, default=400_000,
                   help="meta-iterations (a rerun resumes up to this many)")
    g.add_argument("--eval-interval", "--eval_interval", dest="eval_interval", type=int, default=10,
                   help="monitor the train and val tasks and write a checkpoint every N "
                        "meta-iterations")
    g.add_argument("--monitor_tasks", type=int, default=10,
                   help="tasks per split evaluated every --eval-interval")
    g.add_argument("--task_streams", choices=TASK_STREAMS, default=PER_TASK,
                   help="per_task: each task of a meta-batch draws from its own seeded stream, "
                        "the same on any number of devices; one_stream: every task from the "
                        "training stream in turn, as runs without --distribute did before "
                        "(one device only; a resumed run keeps its checkpoint's scheme)")
    g.add_argument("--checkpoint", default="model_checkpoint",
                   help="directory for checkpoints, logs and results")
    g.add_argument("--keep_checkpoints", type=int, default=2,
                   help="this run's newest checkpoints kept (older ones are deleted)")
    g.add_argument("--pretrained", action="store_true",
                   help="skip meta-training; evaluate the checkpoint in --checkpoint")
    g.add_argument("--continue_training_from_checkpoint", default=None,
                   help="start meta-training from another run, a ckpt-<step> folder or the paper's"
                        " TF1 checkpoint")
    g.add_argument("--do_not_restore_final_layer_weights", action="store_true",
                   help="load everything but the head (final_layer_weights), which keeps its "
                        "initialization")
    g.add_argument("--export", default=None,
                   help="write the model --checkpoint holds (any init the tool loads) in "
                        "--export_format to this folder (or .keras / .tflite file); alone, that "
                        "is all the run does; in a run, the loaded model is exported first")
    g.add_argument("--export_format", default="keras", choices=("keras", "saved_model", "tflite"),
                   help="keras (.keras file), saved_model (uint8 images -> foreground "
                        "probabilities, for TF Serving), tflite (the same, for phones)")
    g.add_argument("--export_keras", default=None,
                   help="the same as --export PATH --export_format keras (PATH ends in .keras)")
    g.add_argument("--compare_random_init", action="store_true",
                   help="also evaluate a random init with the same adaptation budget")


def _add_eval_flags(p):
    g = p.add_argument_group("evaluation")
    g.add_argument("--shots", type=int, default=5,
                   help="support pairs of each evaluated task")
    g.add_argument("--eval-samples", "--eval_samples", dest="eval_samples", type=int, default=200,
                   help="task samples of the final evaluation (with "
                        "--serially_eval_all_test_tasks: passes over every class)")
    g.add_argument("--serially_eval_all_test_tasks", action="store_true",
                   help="evaluate every class of the split in order, --eval-samples times")
    g.add_argument("--transductive", action="store_true",
                   help="predict all queries of a task in one batch (else each after the support "
                        "images)")
    g.add_argument("--protocol", default="paper", choices=["paper", "hsnet"],
                   help="final evaluation protocol: paper = --eval-samples task samples of "
                        "--shots supports + 5 queries, mean task IoU; hsnet = every image of every "
                        "evaluated class a query once with --shots random other images as "
                        "supports, class-accumulated mIoU and FB-IoU (docs/protocols.md)")
    g.add_argument("--predictions_dir", default="predictions",
                   help="where SAVE_PREDICTIONS=1 writes overlays")
    g.add_argument("--save_fine_tuned_checkpoints", action="store_true",
                   help="keep each evaluated test (or val) task's adapted weights")
    g.add_argument("--save_fine_tuned_checkpoints_train", action="store_true",
                   help="keep each evaluated train task's adapted weights")
    g.add_argument("--save_fine_tuned_checkpoints_dir", default=None,
                   help="where the adapted weights go (default: <checkpoint>/fine_tuned)")
    g.add_argument("--fine-tune-task", "--fine_tune_task", dest="fine_tune_task", default=None,
                   help="your own folder: support/<n>.jpg+png pairs and query/*.jpg")
    g.add_argument("--query_dir", default=None,
                   help="the images to segment, at any depth (default: --fine-tune-task's "
                        "DIR/query); without --fine-tune-task, --checkpoint's adapted weights "
                        "segment them as they are")
    g.add_argument("--masks_dir", default=None,
                   help="where the masks go, mirroring the images' folders (default: "
                        "DIR/predictions); a rerun resumes there")
    g.add_argument("--mask_format", nargs="+", default=["png"], choices=MASK_FORMATS,
                   help="the masks' formats: png (0/255 masks), overlay (drawn on the photo), "
                        "coco (instances.json, RLE), yolo (labels/*.txt polygons), label_studio "
                        "(tasks with pre-labels, to import)")
    g.add_argument("--query_masks", default=None,
                   help="ground-truth masks <stem>.png mirroring the images' folders: those "
                        "images are scored (IoU)")
    g.add_argument("--restart", action="store_true",
                   help="replace the masks another init, other examples or settings wrote in "
                        "the masks folder (files metaseg did not write are kept)")
    g.add_argument("--fine-tuned-checkpoint", "--fine_tuned_checkpoint",
                   dest="fine_tuned_checkpoint", default=None,
                   help="where --fine-tune-task writes the adapted weights (default: "
                        "<task>/fine_tuned_checkpoint)")


def _add_serve_flags(p):
    g = p.add_argument_group("segment your own images: the page, Label Studio's ML backend "
                             "(docs/adaptation.md, docs/labeling.md)")
    g.add_argument("--serve", action="store_true",
                   help="open a page where you paint a few examples and segment more images "
                        "with the init in --checkpoint")
    g.add_argument("--label_studio", action="store_true",
                   help="serve Label Studio's ML backend with the init in --checkpoint: it adapts "
                        "to a project's annotations and pre-labels its other tasks "
                        "(docs/labeling.md; port 9090 unless --port is given)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address the page binds to (0.0.0.0 opens it to the network)")
    g.add_argument("--port", type=int, default=7860, help="port of the page")
    g.add_argument("--serve_dir", default="serve_output",
                   help="the page's output folder: one subfolder per browser session; nothing "
                        "is written elsewhere")
    g.add_argument("--serve_keep_hours", type=float, default=24.0,
                   help="the page removes the files of a browser session idle for this many "
                        "hours (checked every few minutes, and when the page starts)")


def _add_uho_flags(p):
    g = p.add_argument_group("update hyperparameter optimization (UHO)")
    g.add_argument("--optimize_update_hyperparms_on_val_set", action="store_true",
                   help="search the adaptation (lr, steps, batch, aug rate, dropout) on the val "
                        "classes (UHO) before the final evaluation")
    g.add_argument("--num_configs_to_sample", type=int, default=100,
                   help="UHO: configurations per round of the GP search")
    g.add_argument("--uho_outer_iters", type=int, default=1,
                   help="rounds of GP search, each narrowing the lr range to the top 10%%")
    g.add_argument("--lr_search_range_low", type=float, default=5e-4,
                   help="UHO: lowest learning rate searched")
    g.add_argument("--lr_search_range_high", type=float, default=0.05,
                   help="UHO: highest learning rate searched")
    g.add_argument("--drop_rate_search_range_low", type=float, default=0.2,
                   help="UHO: lowest head dropout searched")
    g.add_argument("--drop_rate_search_range_high", type=float, default=0.2,
                   help="UHO: highest head dropout searched")
    g.add_argument("--aug_rate_search_range_low", type=float, default=0.5,
                   help="UHO: lowest augmentation rate searched")
    g.add_argument("--aug_rate_search_range_high", type=float, default=0.5,
                   help="UHO: highest augmentation rate searched")
    g.add_argument("--batch_size_search_range_low", type=int, default=8,
                   help="UHO: smallest mini-batch searched")
    g.add_argument("--batch_size_search_range_high", type=int, default=8,
                   help="UHO: largest mini-batch searched")
    g.add_argument("--min_steps", type=int, default=0,
                   help="UHO: adaptation steps that always run before early stopping")
    g.add_argument("--max_steps", type=int, default=80,
                   help="UHO: most adaptation steps of a configuration")
    g.add_argument("--uho_patience", type=int, default=50,
                   help="early stopping's patience in steps (UHO and the k-shot curves)")
    g.add_argument("--eval_tasks_with_median_early_stopping_iterations", action="store_true",
                   help="UHO: score each configuration at its median early-stopping step count")
    g.add_argument("--meta_fine_tune_steps_on_train_val", type=int, default=0,
                   help="after UHO: meta-train N more iterations on train + val classes with UHO's"
                        " adaptation")
    g.add_argument("--uho_results_csv_name", default="val-set_hyper_param_search_results.csv",
                   help="UHO's results file in --checkpoint (_<shots>-shot is added)")
    g.add_argument("--uho_estimator", default="GP",
                   help="UHO's scikit-optimize estimator (only GP)")
    g.add_argument("--uho_repetitions", type=int, default=None,
                   help="episodes per val class per configuration (default: 1 with --fss_1000, "
                        "else 4, as the reference)")


def _add_experiment_flags(p):
    g = p.add_argument_group("experiments and baselines")
    g.add_argument("--run_k_shot_learning_curves_experiment", action="store_true",
                   help="run the k-shot learning curves instead of the final evaluation")
    g.add_argument("--k_shot_range", type=int, nargs="+", default=[1, 5, 10, 50, 100, 200, 400],
                   help="support-set sizes k (default: the reference's k grid; k values a class "
                        "cannot supply are dropped)")
    g.add_argument("--k_shot_iter_range", type=int, nargs="+", default=None,
                   help="inner steps per k of --k_shot_range (default, as the reference always: "
                        "--eval-iters below k = 10, early stopping on 20%% of the k examples from "
                        "k = 10)")
    g.add_argument("--k_shot_max_steps", type=int, default=500,
                   help="early-stopping bound of the k-shot experiment (k >= 10)")
    g.add_argument("--k_shot_num_query", type=int, default=20,
                   help="held-out images scored per task and k (capped by the class size)")
    g.add_argument("--baseline_checkpoint", default=None,
                   help="joint-training checkpoint to plot against in the k-shot curves")
    g.add_argument("--joint_train", action="store_true",
                   help="train the joint (transfer-learning) baseline instead of meta-learning")
    g.add_argument("--joint_train_epochs", type=int, default=10,
                   help="epochs of --joint_train")


# MTL-Segmentation's numeric flags (ahirsharan/MTL-Segmentation), read by the --phase modes.
MTL_HELP = {
    "meta_lr1": "meta_train: Adam learning rate of the scale/shift and batch-norm variables",
    "meta_lr2": "meta_train: Adam learning rate of the head's initial weights",
    "base_lr": "the head's SGD learning rate when it adapts to a task",
    "update_step": "the head's adaptation steps per task",
    "gamma": "meta_train: both learning rates decay by this every --step_size epochs",
    "step_size": "meta_train: epochs between learning-rate decays",
    "max_epoch": "meta_train: epochs of --num_batch tasks",
    "num_batch": "meta_train: tasks per epoch (also the monitor and checkpoint interval)",
    "way": "classes per task, background included (2; 1 is accepted as an alias)",
    "shot": "meta_train: support pairs per task",
    "teshot": "meta_eval: support pairs per task",
    "train_query": "meta_train: query pairs per task",
    "val_query": "meta_train and pre_train: query pairs of the monitored val tasks",
    "test_query": "meta_eval: query pairs per task",
    "pre_lr": "pre_train: initial SGD learning rate",
    "pre_gamma": "pre_train: the learning rate decays by this every --pre_step_size epochs",
    "pre_step_size": "pre_train: epochs between learning-rate decays",
    "pre_max_epoch": "pre_train: epochs",
    "pre_batch_size": "pre_train: pairs per step",
    "pre_custom_weight_decay": "pre_train: L2 coefficient added to the gradients",
    "pre_custom_momentum": "pre_train: Nesterov momentum",
}


def _add_mtl_flags(p):
    g = p.add_argument_group("meta-transfer learning (--model_name mtl_unet)")
    d = MTLConfig()
    g.add_argument("--phase", default=None, choices=["pre_train", "meta_train", "meta_eval"],
                   help="meta-transfer learning's phase (needs --model_name mtl_unet)")
    for name, meaning in MTL_HELP.items():
        g.add_argument(f"--{name}", type=type(getattr(d, name)), default=getattr(d, name),
                       help=meaning)
    g.add_argument("--init_weights", default=None, help="pre-trained U-Net weights (meta_train)")
    g.add_argument("--eval_weights", default=None, help="meta-trained weights (meta_eval)")
    g.add_argument("--dataset", default=None, choices=["COCO", "COCOStuff", "Fewshot"],
                   help="pre-training data: COCO (MTL-Segmentation's layout, grey-level labels), "
                        "COCOStuff (official label maps, 255 = unlabelled) or Fewshot (the "
                        "pooled meta-train classes; also when not given)")
    g.add_argument("--dataset_dir", default=None, help="root of the COCO / COCO-Stuff dataset")
    g.add_argument("--num_classes", type=int, default=5,
                   help="classes of the COCO / COCO-Stuff labels, background included (head "
                        "channels of the pre-training)")
    g.add_argument("--mdataset_dir", default=None,
                   help="MTL-Segmentation's name for the FSS-1000 data of the meta phases: shards "
                        "written by fss_1000_image_to_tfrecord.py (same as --data-dir)")
    g.add_argument("--pre_init_weights", default=None,
                   help="a .weights.h5 of the plain U-Net the pre-training starts from")
    g.add_argument("--meta_label", default="exp1", help="run label, recorded in config.json")
    g.add_argument("--gpu", default=None,
                   help="accepted for MTL-Segmentation's command line; TensorFlow picks the device"
                        " "
                        "(restrict it with CUDA_VISIBLE_DEVICES)")


def _add_device_flags(p):
    g = p.add_argument_group("devices and precision (docs/performance.md)")
    g.add_argument("--distribute", choices=("none", "mirrored", "multi_worker"), default="none",
                   help="spread each meta-batch's tasks and each evaluation's tasks over "
                        "replicas: mirrored = this machine's GPUs (logical CPUs without one), "
                        "multi_worker = the cluster in TF_CONFIG")
    g.add_argument("--num_replicas", type=int, default=1,
                   help="replicas of --distribute mirrored; on a machine without GPUs, splits "
                        "the CPU into this many logical devices (0 = every GPU)")
    g.add_argument("--mixed_precision", choices=("none", "bfloat16", "float16"), default="none",
                   help="compute dtype of the network; variables and the meta-update stay "
                        "float32 (float16 scales the loss)")
    g.add_argument("--jit_compile", choices=("auto", "on", "off"), default="auto",
                   help="XLA for the compiled steps; auto = on with a GPU, off on CPU (slower "
                        "there for depthwise convolutions)")
    g.add_argument("--worker_start_timeout", type=float, default=600.0,
                   help="--distribute multi_worker: seconds to wait for the other workers of "
                        "TF_CONFIG to start before giving up")
    # Read by run_metasegnet.py from argv before TensorFlow is imported, so in no config.
    g.add_argument("--verbose", action="store_true",
                   help="show TensorFlow's C++ log lines (hidden unless TF_CPP_MIN_LOG_LEVEL is "
                        "set)")


def build_parser() -> argparse.ArgumentParser:
    """The full command line of run_metasegnet.py."""
    p = _OneLineParser(prog="run_metasegnet.py",
                       description="Meta-learn and evaluate initializations for few-shot segmentation.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_add_data_flags, _add_model_flags, _add_loss_flags, _add_adaptation_flags,
                _add_meta_flags, _add_eval_flags, _add_uho_flags, _add_experiment_flags,
                _add_mtl_flags, _add_device_flags, _add_serve_flags):
        add(p)
    return p


def _resolve_aliases(a) -> list[str]:
    """MTL-Segmentation's spellings onto ours: --model_type, --mdataset_dir; the default model."""
    problems = []
    if a.model_type and a.model_name not in (None, "mtl_unet"):
        problems.append(f"--model_type UNet is --model_name mtl_unet; drop --model_name "
                        f"{a.model_name}")
    if a.model_name is None:
        a.model_name = "mtl_unet" if a.phase is not None or a.model_type else "efficientlab"
    if a.mdataset_dir is not None:
        if a.data_dir is not None and os.path.abspath(a.data_dir) != \
                os.path.abspath(a.mdataset_dir):
            problems.append(f"--mdataset_dir {a.mdataset_dir!r} and --data-dir {a.data_dir!r} "
                            f"both name the FSS-1000 shards; give one")
        a.data_dir = a.data_dir or a.mdataset_dir
    return problems


def _non_finite(a) -> list[str]:
    """Float flags given as inf or nan (Python's float() accepts both), each named by its first
    spelling (--learning-rate, not the --learning_rate alias)."""
    spelled = {action.dest: action.option_strings[0] for action in build_parser()._actions
               if action.option_strings}
    return [f"{spelled.get(name, '--' + name)} must be a finite number. Received: {value}"
            for name, value in vars(a).items()
            if isinstance(value, float) and not math.isfinite(value)]


def _contradictions(a, given=frozenset()) -> list[str]:
    """Values, and combinations of values, that cannot mean anything (`given`: the dests typed).

    Which flags a mode reads, refuses and needs is mode_flags.MODES' (checked after parsing).
    """
    problems = _non_finite(a) + _resolve_aliases(a)
    if "aug_rate" in given and not a.augment and a.aug_rate > 0:
        problems.append(f"--aug_rate {a.aug_rate:g} augments only with --augment; add --augment "
                        f"(or drop --aug_rate)")
    if a.test_tasks_file and a.num_test_tasks:
        problems.append("--test_tasks_file and --num_test_tasks both choose the test classes; "
                        "give one")
    if a.fp_k_test_set and (a.test_tasks_file or a.num_test_tasks):
        problems.append("--fp_k_test_set fixes the test classes; drop --test_tasks_file/"
                        "--num_test_tasks")
    if a.pretrained and a.continue_training_from_checkpoint:
        problems.append("--pretrained skips meta-training, --continue_training_from_checkpoint "
                        "resumes it; give one")
    if a.optimize_update_hyperparms_on_val_set and a.num_val_tasks < 1:
        problems.append("--optimize_update_hyperparms_on_val_set needs --num_val_tasks >= 1")
    if a.eval_val_tasks and a.num_val_tasks < 1:
        problems.append("--eval_val_tasks needs --num_val_tasks >= 1")
    if a.phase is not None and a.model_name != "mtl_unet":
        problems.append(f"--phase is the meta-transfer pipeline; it needs --model_name mtl_unet "
                        f"(got {a.model_name})")
    if a.model_name == "mtl_unet" and a.phase is None:
        problems.append("--model_name mtl_unet needs --phase pre_train|meta_train|meta_eval")
    if a.classes != 1:
        problems.append(f"--classes must be 1 (binary segmentation tasks). Received: {a.classes}")
    if a.export_keras and not a.export_keras.endswith(".keras"):
        problems.append(f"--export_keras must name a .keras file. Received: {a.export_keras!r}")
    if a.export_keras and a.export:
        problems.append("--export_keras PATH is --export PATH --export_format keras; give one")
    if a.fine_tuned_checkpoint and os.path.isfile(a.fine_tuned_checkpoint):
        problems.append(f"--fine-tuned-checkpoint {a.fine_tuned_checkpoint!r} is a file; pass a "
                        f"folder for the adapted weights")
    backbone = a.restore_efficient_net_weights_from
    for option, path in (("--restore_efficient_net_weights_from",
                          None if backbone == IMAGENET else backbone),
                         ("--baseline_checkpoint", a.baseline_checkpoint),
                         ("--test_tasks_file", a.test_tasks_file),
                         ("--continue_training_from_checkpoint",
                          a.continue_training_from_checkpoint)):
        if path and not os.path.exists(path):
            problems.append(f"{option} {path!r} does not exist")
    exporting = (a.export or a.export_keras) and not a.data_dir
    if not (a.pretrained or a.fine_tune_task or a.serve or exporting) and \
            os.path.isfile(a.checkpoint) and a.phase is None:
        problems.append(f"--checkpoint {a.checkpoint!r} is a file; training writes a folder "
                        f"(only --pretrained, --fine-tune-task and --serve read a file, e.g. a "
                        f".tar.gz)")
    if a.distribute == "none" and a.num_replicas != 1:
        problems.append(f"--num_replicas {a.num_replicas} needs --distribute mirrored (without "
                        f"--distribute a run uses one device); add it or drop --num_replicas")
    if a.distribute == "multi_worker" and a.num_replicas != 1:
        problems.append("--distribute multi_worker places one replica per GPU of each worker "
                        "(one per worker on CPU); drop --num_replicas")
    if a.distribute != "none" and a.task_streams == ONE_STREAM:
        problems.append("--task_streams one_stream runs on one device; drop --distribute or use "
                        "--task_streams per_task")
    if a.distribute == "multi_worker" and (a.optimize_update_hyperparms_on_val_set
                                          or a.run_k_shot_learning_curves_experiment
                                          or a.fine_tune_task):
        problems.append("UHO, k-shot curves and --fine-tune-task write their own files; run them "
                        "on one machine (--distribute none|mirrored, --pretrained), not with "
                        "--distribute multi_worker")
    if not 1 <= a.port <= 65535:
        problems.append(f"--port must be in 1..65535. Received: {a.port}")
    if not a.serve_keep_hours > 0:
        problems.append(f"--serve_keep_hours must be > 0. Received: {a.serve_keep_hours}")
    if a.rsd and any(r not in (1, 2, 3, 4) for r in a.rsd):
        problems.append(f"--rsd takes reductions 1..4. Received: {a.rsd}")
    return problems


def given_flags(argv=None) -> frozenset[str]:
    """The flags typed on the command line (their dests), as opposed to defaults.

    Args:
        argv: the arguments (default sys.argv[1:]).

    Returns:
        dests, e.g. {"checkpoint", "fine_tune_task", "learning_rate"}.
    """
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return frozenset(vars(namespace))


def config_from_namespace(a, given=frozenset()) -> Config:
    """Turn parsed flags into the frozen configs (raises ValueError on a bad value).

    Args:
        a: the parsed flags.
        given: the dests of the flags typed on the command line (`given_flags`).

    Returns:
        Config.
    """
    data = DataConfig(data_dir=a.data_dir, image_size=a.image_size, fss_1000=a.fss_1000,
                      test_tasks_file=a.test_tasks_file, num_test_tasks=a.num_test_tasks,
                      num_val_tasks=a.num_val_tasks, fp_k_test_set=a.fp_k_test_set, seed=a.seed)
    if a.phase == "pre_train" and a.dataset in ("COCO", "COCOStuff"):
        check_num_classes(a.dataset, a.num_classes)
    model = ModelConfig(
        model_name=a.model_name, image_size=a.image_size,
        feature_extractor_name=a.feature_extractor_name, rsd=tuple(a.rsd or ()),
        spatial_pyramid_pooling=a.spatial_pyramid_pooling, skip_decoding=a.skip_decoding,
        disable_rsd_residual_connections=a.disable_rsd_residual_connections,
        align_corners=not a.no_align_corners,
        n_unet_encoding_stacks=a.n_unet_encoding_stacks,
        start_num_feature_maps_power=a.start_num_feature_maps_power,
        restore_efficient_net_weights_from=a.restore_efficient_net_weights_from, seed=a.seed,
        num_classes=a.num_classes if a.phase == "pre_train" and a.dataset in ("COCO", "COCOStuff")
        else 2)
    loss = LossConfig(loss_name=a.loss_name, label_smoothing=a.label_smoothing, l2=a.l2, l1=a.l1,
                      darc1=a.darc1)
    adapt = _adaptation({**{name: getattr(a, name) for name in FIELDS if hasattr(a, name)},
                         "aug_rate": a.aug_rate if a.augment else 0.0})
    inner = dataclasses.replace(adapt, steps=a.inner_iters, batch_size=a.inner_batch)
    if a.phase is not None:  # meta-transfer learning adapts the head alone, its own way
        adapt = head_adaptation(adapt, learning_rate=a.base_lr, steps=a.update_step)
    meta = MetaConfig(algorithm="fomaml" if a.foml else "reptile", train_shots=a.train_shots,
                      foml_tail=a.foml_tail,
                      sample_foml_train_val_with_replacement=a.sample_foml_train_val_with_replacement,
                      meta_step_size=a.meta_step, meta_step_size_final=a.meta_step_final,
                      meta_batch_size=a.meta_batch, meta_iters=a.meta_iters,
                      eval_interval=a.eval_interval, monitor_tasks=a.monitor_tasks,
                      keep_checkpoints=a.keep_checkpoints, seed=a.seed,
                      task_streams=a.task_streams, inner=inner)
    # Any non-empty value other than 0/false enables predictions (the reference's
    # SAVE_PREDICTIONS=0 turned them on; ml4ai/mliis utils/viz.py).
    save_predictions = os.environ.get("SAVE_PREDICTIONS", "").strip().lower() not in (
        "", "0", "false", "no", "off")
    evaluation = EvalConfig(
        shots=a.shots, eval_samples=a.eval_samples,
        serially_eval_all_test_tasks=a.serially_eval_all_test_tasks,
        transductive=a.transductive, eval_val_tasks=a.eval_val_tasks,
        predictions_dir=a.predictions_dir if save_predictions else None,
        save_fine_tuned_checkpoints=a.save_fine_tuned_checkpoints,
        save_fine_tuned_checkpoints_train=a.save_fine_tuned_checkpoints_train,
        save_fine_tuned_checkpoints_dir=a.save_fine_tuned_checkpoints_dir, protocol=a.protocol)
    uho = UHOConfig(
        num_configs_to_sample=a.num_configs_to_sample, uho_outer_iters=a.uho_outer_iters,
        lr_range=(a.lr_search_range_low, a.lr_search_range_high),
        drop_rate_range=(a.drop_rate_search_range_low, a.drop_rate_search_range_high),
        aug_rate_range=(a.aug_rate_search_range_low, a.aug_rate_search_range_high),
        batch_size_range=(a.batch_size_search_range_low, a.batch_size_search_range_high),
        min_steps=a.min_steps, max_steps=a.max_steps, patience=a.uho_patience,
        eval_tasks_with_median_early_stopping_iterations=(
            a.eval_tasks_with_median_early_stopping_iterations),
        meta_fine_tune_steps_on_train_val=a.meta_fine_tune_steps_on_train_val,
        results_csv_name=a.uho_results_csv_name, estimator=a.uho_estimator,
        repetitions=a.uho_repetitions if a.uho_repetitions is not None else
        (1 if a.fss_1000 else 4))
    kshot = KShotConfig(k_values=tuple(a.k_shot_range),
                        k_shot_iter_range=tuple(a.k_shot_iter_range) if a.k_shot_iter_range else None,
                        baseline_checkpoint=a.baseline_checkpoint,
                        max_steps=a.k_shot_max_steps, num_query=a.k_shot_num_query,
                        patience=a.uho_patience)
    mtl = MTLConfig(phase=a.phase or "meta_train", meta_lr1=a.meta_lr1, meta_lr2=a.meta_lr2,
                    base_lr=a.base_lr, update_step=a.update_step, max_epoch=a.max_epoch,
                    num_batch=a.num_batch, step_size=a.step_size, gamma=a.gamma,
                    way=2 if a.way == 1 else a.way,
                    shot=a.shot, teshot=a.teshot, train_query=a.train_query,
                    val_query=a.val_query, test_query=a.test_query, init_weights=a.init_weights,
                    eval_weights=a.eval_weights, pre_max_epoch=a.pre_max_epoch,
                    pre_batch_size=a.pre_batch_size, pre_lr=a.pre_lr, pre_gamma=a.pre_gamma,
                    pre_step_size=a.pre_step_size,
                    pre_custom_weight_decay=a.pre_custom_weight_decay,
                    pre_custom_momentum=a.pre_custom_momentum,
                    dataset=a.dataset or "Fewshot", dataset_dir=a.dataset_dir,
                    pre_init_weights=a.pre_init_weights, meta_label=a.meta_label)
    run = RunConfig(checkpoint=a.checkpoint, pretrained=a.pretrained,
                    continue_training_from_checkpoint=a.continue_training_from_checkpoint,
                    do_not_restore_final_layer_weights=a.do_not_restore_final_layer_weights,
                    export=a.export or a.export_keras,
                    export_format="keras" if a.export_keras else a.export_format,
                    fine_tune_task=a.fine_tune_task,
                    fine_tuned_checkpoint=a.fine_tuned_checkpoint, query_dir=a.query_dir,
                    masks_dir=a.masks_dir, mask_format=tuple(dict.fromkeys(a.mask_format)),
                    query_masks=a.query_masks, restart=a.restart,
                    optimize_update_hyperparms_on_val_set=a.optimize_update_hyperparms_on_val_set,
                    run_k_shot_learning_curves_experiment=a.run_k_shot_learning_curves_experiment,
                    joint_train=a.joint_train, joint_train_epochs=a.joint_train_epochs,
                    compare_random_init=a.compare_random_init, mtl=a.phase is not None,
                    serve=a.serve, label_studio=a.label_studio, host=a.host, port=a.port,
                    serve_dir=a.serve_dir, serve_keep_hours=a.serve_keep_hours,
                    given_flags=tuple(sorted(given)))
    device = DeviceConfig(distribute=a.distribute, num_replicas=a.num_replicas,
                          mixed_precision=a.mixed_precision, jit_compile=a.jit_compile,
                          worker_start_timeout=a.worker_start_timeout)
    return Config(data=data, model=model, loss=loss, adapt=adapt, meta=meta, eval=evaluation,
                  uho=uho, kshot=kshot, mtl=mtl, run=run, device=device)


def _adaptation(values: dict) -> Adaptation:
    """An Adaptation from the flags' values; a bad one is named by its flag."""
    try:
        return Adaptation(**values)
    except UserError as e:
        name = str(e).split(" ", 1)[0]
        raise UserError(f"{flag(name) or name}{str(e)[len(name):]}") from e


def parse_args(argv=None) -> Config:
    """Parse the command line into a Config; bad or contradictory flags exit 2 with one line."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    given = given_flags(argv)
    problems = _contradictions(namespace, given)
    if problems:
        parser.error(problems[0])
    try:
        return config_from_namespace(namespace, given)
    except ValueError as e:
        parser.error(str(e))
