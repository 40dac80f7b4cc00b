"""Machine specs, machine files and the remote command's quoting, run by real shells (sh, and
tcsh where installed) as ssh's remote side runs it: ``$SHELL -c STRING``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pydistributed.managers.sshcommand import (
    Machine,
    csh_quote,
    normalize_machines,
    parse_machine,
    parse_machine_file,
    remote_command,
    stdin_payload,
)

NASTY = [
    "plain",
    "a b",
    "it's",
    'say "hi"',
    "$HOME",
    "${HOME}",
    "`id`",
    "$(id)",
    "a\\b",
    "",
    "!bang !!",
    "*?[glob]",
    "~tilde",
    "semi;colon&amp|pipe>x<y",
    "tab\there",
    "é ü 中",
    "'\"$`mix\\'",
    "-dash",
    "new\nline",
]
SHOW = (
    "import json, os, sys; "
    "print(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ), sys.stdin.readline()]))"
)


def test_parse_machine() -> None:
    assert parse_machine("h") == Machine("h", None, "h", None, None)
    assert parse_machine("alice@h:2222 10.0.0.1:9000") == Machine(
        "alice@h:2222 10.0.0.1:9000", "alice", "h", 2222, "10.0.0.1:9000"
    )
    assert parse_machine("a@b@h").user == "a@b"
    m = parse_machine("bob@[fe80::1]:22 [::1]")
    assert (m.user, m.host, m.port, m.bind, m.destination) == (
        "bob",
        "fe80::1",
        22,
        "[::1]",
        "bob@fe80::1",
    )
    for bad in ("h:0", "h:65536", "h:", "h:1:2", "[::1", "[::1]x", "", "a b c", "@h", "h;rm"):
        with pytest.raises(ValueError):
            parse_machine(bad)


def test_normalize_machines_adds_counts_like_julia() -> None:
    got = normalize_machines(["h1", ("h1", 2), ("h2", "auto"), ("h2", 3), "h3  10.0.0.3"])
    assert [(m.spec, c) for m, c in got] == [("h1", 3), ("h2", "auto"), ("h3  10.0.0.3", 1)]
    for bad in [("h", -1), ("h", 1.5), ("h", True), ("h", 1, 2)]:
        with pytest.raises(ValueError):
            normalize_machines([bad])


def test_machine_file() -> None:
    text = "# cluster\n\n2*alice@h1:22 10.0.0.1:9000  # x\n  h2\n[::1]:2222\n"
    assert parse_machine_file(text) == [
        ("alice@h1:22 10.0.0.1:9000", 2),
        ("h2", 1),
        ("[::1]:2222", 1),
    ]
    for bad, says in (
        ("0*h", "positive"),
        ("x*h", "positive"),
        ("2*", "expected"),
        ("h:99999", "port"),
    ):
        with pytest.raises(ValueError, match=rf"f, line 2: '{bad.replace('*', '[*]')}': .*{says}"):
            parse_machine_file("ok\n" + bad + "\n", "f")


def _run(shell: list[str], remote: str, payload: bytes) -> list[object]:
    r = subprocess.run([*shell, remote], input=payload, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _shells() -> list[tuple[str, list[str]]]:
    shells = [("posix", ["sh", "-c"])]
    if shutil.which("bash"):
        shells.append(("posix", ["bash", "-c"]))
    tcsh = shutil.which("tcsh")
    if tcsh:
        shells.append(("csh", [tcsh, "-f", "-c"]))
    return shells


@pytest.mark.parametrize(
    ("kind", "shell"), _shells(), ids=lambda x: x if isinstance(x, str) else x[0]
)
def test_remote_command_survives_the_remote_shell(
    kind: str, shell: list[str], tmp_path: object
) -> None:
    nasty = NASTY
    argv = [sys.executable, "-c", SHOW, *nasty]
    env = [("PD_A", "x y $HOME `id` 'q' \"d\" !b"), ("PD_EMPTY", ""), ("PD_B", "é")]
    d = tmp_path / "dir with 'quote' $x"  # type: ignore[operator]
    d.mkdir()
    remote = remote_command(kind, argv, env, str(d))
    args, cwd, environ, rest = _run(shell, remote, stdin_payload(env, "COOKIE123"))
    assert args == nasty
    assert cwd == str(d)
    for name, value in env:
        assert environ[name] == value  # type: ignore[index]
    assert rest == "COOKIE123\n"  # the worker reads the cookie line itself
    assert "COOKIE123" not in remote and "x y" not in remote


def test_a_missing_dir_fails_and_the_default_dir_is_optional(tmp_path: object) -> None:
    argv = [sys.executable, "-c", SHOW]
    r = subprocess.run(
        ["sh", "-c", remote_command("posix", argv, [], "/nonexistent/x")],
        input=b"C\n",
        capture_output=True,
        timeout=30,
    )
    assert r.returncode != 0 and b"/nonexistent/x" in r.stderr
    remote = remote_command("posix", argv, [], None, default_dir="/nonexistent/x")
    assert _run(["sh", "-c"], remote, b"C\n")[3] == "C\n"


@pytest.mark.skipif(shutil.which("tcsh") is None, reason="no tcsh here (apt-get install tcsh)")
@pytest.mark.parametrize("arg", NASTY)
def test_csh_quote(arg: str) -> None:
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    line = " ".join(csh_quote(a) for a in (sys.executable, "-c", code, arg))
    r = subprocess.run(["tcsh", "-f", "-c", line], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [arg]


def test_env_values_with_newlines_are_refused() -> None:
    with pytest.raises(ValueError, match="newline"):
        remote_command("posix", ["x"], [("A", "1\n2")], None)
    with pytest.raises(ValueError, match="name"):
        remote_command("posix", ["x"], [("A-B", "1")], None)
    with pytest.raises(ValueError, match="shell"):
        remote_command("fish", ["x"], [], None)


def test_restrict_is_refused_for_ssh_workers_with_what_to_use() -> None:
    from pydistributed import addprocs, workers

    before = workers()
    with pytest.raises(TypeError, match=r"'restrict'.*bind_addr.*tunnel=True"):
        addprocs(["nosuchhost.invalid"], restrict=False)
    assert workers() == before  # refused before any login
