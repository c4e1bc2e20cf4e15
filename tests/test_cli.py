"""The command line: outputs, exit statuses (0 ok, 1 invalid, 2 usage), and no torch on the way."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SCHEDULES

import growdsl
from growdsl.cli import main
from growdsl.plan.plan import Plan

GSTACK_7B = str(ROOT / "schedules" / "gstack_7b.grow")


def write(tmp_path, text, name="s.grow"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_is_silent_on_success(capsys):
    assert main(["validate", *map(str, SCHEDULES)]) == 0
    assert capsys.readouterr() == ("", "")


def test_validate_reports_errors_of_every_file_and_exits_1(tmp_path, capsys):
    good = write(tmp_path, "train 6L for 10B; stack x4; train 1B", "good.grow")
    bad = write(tmp_path, "train 6L for 10B; stack x4; train 1G", "bad.grow")
    worse = write(tmp_path, "trian 6L", "worse.grow")
    assert main(["validate", good, bad, worse]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:36: error: unknown unit 'G'" in err
    assert f"{worse}:1:1: error: unknown word 'trian'" in err and "did you mean 'train'?" in err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.grow")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["plan"]) == 2
    assert main(["plan", "--predict-d", "--params", "seven", "--tokens", "2T"]) == 2
    assert main(["plan", GSTACK_7B, "--params", "7B"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_binary_file_is_an_invalid_schedule(tmp_path, capsys):
    path = tmp_path / "b.grow"
    path.write_bytes(b"\xff\xfe\x00train")
    assert main(["validate", str(path)]) == 1
    assert "not a UTF-8 text file" in capsys.readouterr().err


def test_plan_prints_stages_growths_and_totals(capsys):
    assert main(["plan", GSTACK_7B]) == 0
    out = capsys.readouterr().out
    assert "8 -> 32 layers, map (0-7)x4, R_c 28/31 (90.3%)" in out
    assert "20.1B (auto)" in out and "143,052" in out
    assert "baseline       32L from scratch, 145,575 steps (305B tokens), the same FLOPs" in out
    assert "194B tokens (+54.6%)" in out  # what the paper measured, said plainly


def test_plan_json_round_trips(capsys):
    assert main(["plan", GSTACK_7B, "--json"]) == 0
    plan = Plan.from_json(capsys.readouterr().out)
    assert [s.shape.n_layers for s in plan.stages] == [8, 32]
    assert json.loads(plan.to_json())["stages"][1]["growths"][0]["connection_rate"] == "28/31"


def test_plan_predict_d_for_a_schedule(capsys):
    assert main(["plan", GSTACK_7B, "--predict-d"]) == 0
    out = capsys.readouterr().out
    assert "D = 300B tokens" in out and "d = 20.06B tokens" in out and "schedule: 20.06B, g = 4" in out


def test_plan_predict_d_without_a_file_reproduces_llama2_7b(capsys):
    assert main(["plan", "--predict-d", "--params", "7B", "--tokens", "2T"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "target parameters N   7B",
        "target tokens D       2T",
        "compute C = 6ND       8.400e+22 FLOPs",
        "growth timing d       11.11B tokens",
        "growth factor g       4 (the paper's choice; 2-4 works)",
    ]


def test_plan_shows_warnings_on_stderr(tmp_path, capsys):
    path = write(tmp_path, 'train 6L for 10B; stack layers "1234*6"; train 100B')
    assert main(["plan", path]) == 0
    assert "warning: the pattern drops base layers 5, 6" in capsys.readouterr().err


def test_console_script_and_module_run_without_importing_torch():
    code = (
        "import sys; from growdsl.cli import main; rc = main(['plan', sys.argv[1]]); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, GSTACK_7B], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "growdsl", "validate", GSTACK_7B], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    marker = readme.index("<!-- test-command")
    block = readme[marker:].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert block.startswith("python3 -m venv .venv") and block.endswith("-m pytest")
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_version_and_a_one_stage_plan_read_right(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"growdsl {growdsl.__version__}"
    one = tmp_path / "one.grow"
    one.write_text("model tiny\ntrain 4L for 10 steps\n")
    assert main(["plan", str(one)]) == 0
    assert f"{one}: 1 stage, 4L" in capsys.readouterr().out


def test_a_source_checkout_plans_without_being_installed(tmp_path):
    import shutil

    for part in ("growdsl", "grammars"):
        shutil.copytree(ROOT / part, tmp_path / part)
    libraries = [p for p in sys.path if p.endswith("site-packages")]  # lark and pydantic, no .pth hooks (-S)
    code = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}]; sys.path += {libraries!r}\n"
        f"import growdsl; assert growdsl.__file__.startswith({str(tmp_path)!r}), growdsl.__file__\n"
        f"from growdsl.plan import plan_file; print(len(plan_file({str(SCHEDULES[0])!r}).stages))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and int(out.stdout) >= 1, out.stderr


@pytest.mark.parametrize(
    "params,tokens,code,said",
    [
        ("1e400", "2T", 2, "'1e400' is too large"),
        ("7", "2T", 0, "N = 7 is outside the 410M-7B the fit was made on"),
        ("1B", "1M", 0, "d exceeds D"),
        ("0.5", "1", 2, "a compute budget of 3 FLOPs is far below the fit's"),  # 10^336 tokens: OverflowError
    ],
)
def test_predict_d_refuses_what_is_not_a_number_and_warns_outside_the_fit(params, tokens, code, said, capsys):
    assert main(["plan", "--predict-d", "--params", params, "--tokens", tokens]) == code
    assert said in capsys.readouterr().err
    assert main(["plan", "--predict-d", "--params", "7B", "--tokens", "2T"]) == 0
    assert capsys.readouterr().err == ""  # Llama2-7B on 2T: inside the fit, d well below D


def test_a_path_the_system_refuses_is_one_line_for_every_command(tmp_path, capsys):
    """A 300-character name is longer than a file system takes (OSError wherever it is met)."""
    long = tmp_path / ("a" * 300)
    schedule = tmp_path / "s.grow"
    schedule.write_text("model tiny layers 2\nwarmup 2 steps\ntrain 2L for 10 steps\n")
    commands = [
        ["validate", str(long) + ".grow"],
        ["plan", str(schedule), "--data", str(long)],
        ["data", "prepare", str(schedule), "--out", str(long)],
        ["run", str(schedule), "--run-dir", str(long)],
        ["eval", str(long)],
        ["export", str(long), "--hf", str(tmp_path / "hf")],
    ]
    for argv in commands:
        assert main(argv) in (1, 2), argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "File name too long" in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.grow"]
