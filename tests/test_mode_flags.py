"""The table of modes (mode_flags.MODES): every row is whole and runs a function of
run_metasegnet.py; every refusal and need follows from it, for every mode."""
import pytest

import run_metasegnet
from args import build_parser, parse_args
from mode_flags import FLAG_GROUPS, MODES, foreign_flag, mode_of, typed_flags

# One command line per mode: the flags that choose it and those it needs.
CHOOSE = {
    "serve": ["--serve", "--checkpoint", "c"],
    "label_studio": ["--label_studio", "--checkpoint", "c"],
    "export_only": ["--export", "e", "--checkpoint", "c"],
    "fine_tune_only": ["--fine-tune-task", "t", "--checkpoint", "c"],
    "segment_only": ["--query_dir", "q", "--masks_dir", "m", "--checkpoint", "c"],
    "multiclass_pre_train": ["--phase", "pre_train", "--dataset", "COCO", "--dataset_dir", "d"],
    "mtl_pre_train": ["--phase", "pre_train", "--data-dir", "x"],
    "mtl_meta_train": ["--phase", "meta_train", "--data-dir", "x"],
    "mtl_meta_eval": ["--phase", "meta_eval", "--data-dir", "x"],
    "joint_train": ["--joint_train", "--data-dir", "x"],
    "fine_tune_after_uho": ["--fine-tune-task", "t", "--optimize_update_hyperparms_on_val_set",
                            "--num_val_tasks", "1", "--data-dir", "x"],
    "k_shot_curves": ["--run_k_shot_learning_curves_experiment", "--data-dir", "x"],
    "meta_train": ["--data-dir", "x"],
}


def test_every_row_is_whole_and_runs_a_function():
    parser_flags = {o for a in build_parser()._actions for o in a.option_strings}
    grouped = [flag for _, table in FLAG_GROUPS.values() for flag in table]
    assert len(grouped) == len(set(grouped)) and set(grouped) <= parser_flags
    assert set(CHOOSE) == set(MODES)
    for name, row in MODES.items():
        assert callable(getattr(run_metasegnet, row.function)), name
        assert set(row.reads) | set(row.refuses) == set(FLAG_GROUPS), name
        assert not set(row.reads) & set(row.refuses), name
        assert mode_of(parse_args(CHOOSE[name])) == name
        assert foreign_flag(name, typed_flags(build_parser(), CHOOSE[name])) is None, name


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_refused_group_and_each_need_is_refused_in_one_line(mode):
    """One flag of every group the row refuses is refused, naming the mode; without a flag it
    needs, that flag is named."""
    row, parser = MODES[mode], build_parser()
    for group in row.refuses:
        readers, table = FLAG_GROUPS[group]
        flag = next(iter(table))
        problem = foreign_flag(mode, typed_flags(parser, CHOOSE[mode]) + [flag])
        assert problem.startswith(f"{flag} is not read by {row.name} (it belongs to {readers})")
    for need in row.needs:
        flags = [f for f in typed_flags(parser, CHOOSE[mode]) if f not in need.split("|")]
        assert f"is needed by {row.name}" in foreign_flag(mode, flags)
