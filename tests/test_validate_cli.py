"""``python -m pipelines.validate``: one OK line and exit 0, or every error on stderr and exit 2;
an unreadable or unparsable file is one line, never a traceback."""
import os
import subprocess
import sys

import pytest
import yaml

from pipelines import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "config.yaml")


@pytest.fixture
def config_dir(tmp_path):
    """A folder for configs derived from the example, with its upload CSV beside them."""
    (tmp_path / "vip.csv").write_text("email\nx@y.z\n")
    return tmp_path


def write(folder, doc, name="c.yaml"):
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def example():
    with open(EXAMPLE) as f:
        return yaml.safe_load(f)


def test_valid_config_prints_one_ok_line(capsys):
    assert validate.main(["--config", EXAMPLE]) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: {EXAMPLE}: 4 audiences (3 mapped), 2 merge policies, stream profile-exports\n" and err == ""


def test_invalid_config_lists_every_error(config_dir, capsys):
    doc = example()
    doc["destination"]["streem"] = "x"
    doc["audiences"][1]["rule"] = 'person.name.firstName = "Marty" adn true'
    doc["mapping"]["audiences"][0]["id"] = "aud-nope"
    path = write(config_dir, doc)
    assert validate.main(["--config", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: invalid config: 3 error(s)",
        "  destination.streem: unknown key",
        "  mapping.audiences[0].id: mapped audience 'aud-nope' is not defined in audiences",
        "  audiences[1].rule: unexpected token 'adn' at column 33",
    ]


@pytest.mark.parametrize("content,reason", [
    (None, "cannot read config file: No such file or directory"),
    ("destination:\n  name: x\n   region: y\n", "not valid YAML or JSON at line 3, column 10"),
])
def test_unreadable_or_unparsable_file_is_one_line(config_dir, capsys, content, reason):
    path = str(config_dir / "c.yaml") if content is None else write(config_dir, content)
    assert validate.main(["--config", path]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: {reason}")


@pytest.mark.parametrize("content,code,stream,expected", [
    (None, 0, "stdout", "OK: "),
    ("{{{", 2, "stderr", "not valid YAML or JSON"),
], ids=["valid", "yaml syntax"])
def test_as_a_process(config_dir, content, code, stream, expected):
    path = EXAMPLE if content is None else write(config_dir, content)
    proc = subprocess.run([sys.executable, "-m", "pipelines.validate", "--config", path],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == code and expected in getattr(proc, stream)
    assert "Traceback" not in proc.stderr and len((proc.stdout + proc.stderr).splitlines()) == 1
