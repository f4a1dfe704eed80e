from __future__ import annotations

from app.envfile import main, prepare_env, render_env


def test_creates_env_with_a_fresh_key_and_prints_it_once(tmp_path, capsys):
    example = tmp_path / ".env.example"
    example.write_text("# the key\nTRAINER_API_KEY=\nLOG_LEVEL=INFO\n")
    target = tmp_path / ".env"
    assert main([str(target)]) == 0
    text = target.read_text()
    key = text.split("TRAINER_API_KEY=")[1].splitlines()[0]
    assert len(key) >= 40 and "LOG_LEVEL=INFO" in text and "# the key" in text
    assert key in capsys.readouterr().out
    assert target.stat().st_mode & 0o077 == 0  # not readable by other users
    # Second run: the file (and its key) stays, and the key is not printed again.
    assert main([str(target)]) == 0
    assert target.read_text() == text
    assert key not in capsys.readouterr().out


def test_each_new_env_gets_a_different_key(tmp_path):
    example = tmp_path / "example"
    example.write_text("TRAINER_API_KEY=\n")
    first = prepare_env(tmp_path / "a.env", example)
    second = prepare_env(tmp_path / "b.env", example)
    assert first and second and first != second


def test_key_line_is_added_when_the_example_lacks_it():
    assert render_env("A=1\n", "k123") == "A=1\nTRAINER_API_KEY=k123\n"
