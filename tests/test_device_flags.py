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
    (["--distribute", "multi_worker", "--num_replicas", "0"], "--num_replicas must be >= 1"),
    (["--distribute", "mirrored", "--joint_train"], "--distribute spreads"),
    (["--mixed_precision", "int8"], "invalid choice"),
])
def test_bad_device_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--data-dir", "x", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
