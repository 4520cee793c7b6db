"""A study's config checked before planning, and the SLURM run that would wait forever."""

import pytest
import yaml
from conftest import written
from cxrtransfer import WorkflowError
from cxrtransfer.plan import checks, validate


def test_config_files_merge_in_configfile_order_and_fill_defaults(root, tmp_path):
    extra = written(tmp_path / "extra.yaml", "study_name: two-files\neps: [4]\n")
    study = validate.from_files([root / "config" / "test.yaml", extra])
    assert study["study_name"] == "two-files" and study["eps"] == [4]
    assert "attack_batch_size" in study and "noise_control" in study  # schema defaults
    assert validate.main([str(root / "config" / "test.yaml")]) == 0


def test_the_command_names_a_yaml_error_and_a_wrong_kaggle_dir(tmp_path, capsys):
    bad = written(tmp_path / "bad.yaml", "base: test\neps: [8\n")
    assert validate.main([str(bad)]) == 1
    assert f"{bad}:3:1: the config file is not valid YAML" in capsys.readouterr().err
    (tmp_path / "dl").mkdir()
    kaggle = {"base": "test", "data": {"source": "kaggle", "kaggle_dir": str(tmp_path / "dl")}}
    path = written(tmp_path / "k.yaml", yaml.safe_dump(kaggle))
    with pytest.raises(WorkflowError, match=r"missing Data_Entry_2017\.csv, train_val_list"):
        validate.from_files([path])


@pytest.mark.parametrize(
    "executor, arrays, jobs, per_second, refused",
    [
        ("slurm", "shard,attack", 2, 100, "--jobs (jobs:) 2"),
        ("slurm", "shard,attack", 5000, 100, "--max-jobs-per-timespan"),
        ("slurm", "shard,attack", 5000, 5000, None),
        ("slurm", None, 2, 100, None),  # no arrays: the plugin submits every job on its own
        ("slurm", "", 2, 100, None),
        ("local", "shard", 2, 100, None),
    ],
)
def test_a_slurm_run_with_arrays_and_too_few_jobs_is_refused(
    executor, arrays, jobs, per_second, refused
):
    def check():
        checks.check_array_submission(120, executor, arrays, jobs, per_second)

    if refused is None:
        check()
        return
    with pytest.raises(WorkflowError, match="plans 120 jobs") as e:
        check()
    assert refused in str(e.value) and "issue #473" in str(e.value)
    assert "--slurm-array-jobs none" in str(e.value)
