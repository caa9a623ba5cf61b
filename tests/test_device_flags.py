"""--distribute, --num_replicas, --mixed_precision, --jit_compile become DeviceConfig once."""
import pytest

from args import parse_args


def test_device_flags_defaults_and_values():
    cfg = parse_args(["--data-dir", "x"])
    assert (cfg.device.distribute, cfg.device.num_replicas, cfg.device.mixed_precision,
            cfg.device.jit_compile) == ("none", 1, "none", "auto")
    cfg = parse_args(["--data-dir", "x", "--distribute", "mirrored", "--num_replicas", "0",
                      "--mixed_precision", "bfloat16", "--jit_compile", "off"])
    assert (cfg.device.distribute, cfg.device.num_replicas, cfg.device.mixed_precision,
            cfg.device.jit_compile) == ("mirrored", 0, "bfloat16", "off")
    assert '"distribute": "mirrored"' in cfg.to_json()


@pytest.mark.parametrize("argv, message", [
    (["--distribute", "multi_worker", "--num_replicas", "0"],
     "--distribute multi_worker places one replica per GPU of each worker"),
    (["--num_replicas", "3"], "--num_replicas 3 needs --distribute mirrored"),
    (["--mixed_precision", "int8"], "invalid choice"),
    (["--distribute", "mirrored", "--task_streams", "one_stream"],
     "--task_streams one_stream runs on one device"),
    (["--distribute", "multi_worker", "--worker_start_timeout", "0"],
     "--worker_start_timeout must be > 0"),
])
def test_bad_device_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--data-dir", "x", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_num_replicas_0_means_every_visible_gpu():
    from devices.distribute import local_replicas
    assert local_replicas(0, 4) == 4 and local_replicas(2, 4) == 2 and local_replicas(3, 0) == 3
    with pytest.raises(ValueError, match="--num_replicas 0 means every GPU, and TensorFlow sees "
                                         "none on this machine; pass --num_replicas N"):
        local_replicas(0, 0)
    with pytest.raises(ValueError, match="--num_replicas 5 but TensorFlow sees 4 GPU"):
        local_replicas(5, 4)


@pytest.mark.parametrize("flags, message", [
    (["--shot", "3"], "--shot is not read by meta-learning runs (no --phase) (it belongs to the "
                      "--phase (MTL) modes); did you mean --shots?"),
    (["--fine-tune-task", "t", "--teshot", "2"], "--teshot is not read by --fine-tune-task"),
    (["--phase", "meta_eval", "--shots", "3"], "--shots is not read by --phase runs (it belongs "
                                               "to meta-learning runs); did you mean --teshot"),
    (["--phase", "pre_train", "--eval_iters", "3"], "--eval-iters is not read by --phase runs"),
    (["--distribute", "mirrored", "--joint_train"], "--distribute is not read by --joint_train"),
    (["--serve", "--checkpoint", "x"], "--data-dir is not read by --serve"),
    (["--fine-tuned-checkpoint", "w"], "--fine-tuned-checkpoint is not read by meta-learning runs"),
])
def test_a_flag_of_another_mode_is_refused_naming_the_flag_meant(flags, message, capsys):
    from args import build_parser, parse_args
    from mode_flags import check_mode_flags, mode_of
    argv = ["--data-dir", "x", *flags]
    with pytest.raises(SystemExit) as e:
        check_mode_flags(build_parser(), mode_of(parse_args(argv)), argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_fine_tune_mode_takes_the_model_loss_inner_and_eval_flags():
    from args import build_parser, parse_args
    from mode_flags import check_mode_flags, mode_of
    argv = ["--fine-tune-task", "t", "--checkpoint", "c", "--image_size", "64", "--rsd", "2",
            "--learning-rate", "0.01", "--eval-iters", "3", "--eval-batch", "2", "--loss_name", "dice", "--sgd",
            "--augment", "--final_layer_dropout_rate", "0.2", "--seed", "3", "--shots", "2"]
    assert mode_of(parse_args(argv)) == "fine_tune_only"
    check_mode_flags(build_parser(), "fine_tune_only", argv)  # nothing refused
