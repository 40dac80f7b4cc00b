"""``shell="wincmd"``: the remote command for a Windows host's cmd.exe, checked against
reference parsers of the two layers it passes through (there is no Windows here): cmd.exe's
carets and quotes, then the C runtime's split of a command line into ``argv``."""

from __future__ import annotations

import random

import pytest

from pydistributed.managers.sshcommand import (
    microsoft_c_args,
    probe_command,
    remote_command,
    stdin_payload,
    wincmd_quote,
)


def msc_argv(line: str) -> list[str]:
    """The C runtime's (2008 and later) split of a command line into arguments."""
    args: list[str] = []
    cur: list[str] = []
    have = False  # an argument has started (an empty "" counts)
    quoted = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            j = i
            while j < n and line[j] == "\\":
                j += 1
            count = j - i
            if j < n and line[j] == '"':
                cur.append("\\" * (count // 2))
                if count % 2:
                    cur.append('"')
                    i = j + 1
                else:
                    i = j  # the quote is handled below
                have = True
                continue
            cur.append("\\" * count)
            have = True
            i = j
            continue
        if c == '"':
            if quoted and i + 1 < n and line[i + 1] == '"':
                cur.append('"')
                i += 2
                continue
            quoted = not quoted
            have = True
            i += 1
            continue
        if c in " \t" and not quoted:
            if have:
                args.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        cur.append(c)
        have = True
        i += 1
    if have:
        args.append("".join(cur))
    return args


def cmd_unescape(line: str) -> str:
    """What cmd.exe hands on after its own parse of a (non-pipeline) command: outside double
    quotes a caret escapes the next character; inside, everything is literal."""
    out: list[str] = []
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == '"':
            quoted = not quoted
            out.append(c)
        elif c == "^" and not quoted and i + 1 < len(line):
            i += 1
            out.append(line[i])
        else:
            if not quoted:
                assert c not in "()!<>&|", f"unescaped {c!r} in {line!r}"
            out.append(c)
        i += 1
    return "".join(out)


def cmd_commands(line: str) -> list[str]:
    """cmd.exe's split of a line into the commands joined by unescaped, unquoted ``&&``."""
    parts: list[str] = []
    start, i, quoted = 0, 0, False
    while i < len(line):
        c = line[i]
        if c == '"':
            quoted = not quoted
        elif c == "^" and not quoted:
            i += 1
        elif c == "&" and not quoted and line.startswith("&&", i):
            parts.append(line[start:i])
            i += 2
            start = i
            continue
        i += 1
    parts.append(line[start:])
    return parts


ALPHABET = 'ab \t"\\^&|<>()!@%=,;xyz'


def _random_strings(k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12))) for _ in range(k)]


def test_microsoft_c_args_round_trip() -> None:
    samples = ["", " ", "a b", 'c"d', "e\\", "f\\\\", '\\"', "x\\y", 'a\\\\"b c', "\t"]
    samples += _random_strings(500, 1)
    for i in range(0, len(samples), 3):
        args = samples[i : i + 3]
        assert msc_argv(microsoft_c_args(args)) == args, args


def test_wincmd_quote_round_trip() -> None:
    texts = ["@echo", "a & b", "(x)", "100!", 'say "a & b" & c', 'odd " quote & x']
    for text in texts + [s.replace("%", "") for s in _random_strings(500, 2)]:
        assert cmd_unescape(wincmd_quote(text)) == text, text


def test_julias_example() -> None:
    # Julia's docstring of shell_escape_wincmd
    assert wincmd_quote('a^"^o"^u"') == 'a^^"^o"^^u^"'


def test_both_layers_give_back_the_arguments() -> None:
    for i, args in enumerate(
        [["C:\\Program Files\\Python\\python.exe", "-m", "pydistributed.worker"]]
        + [_random_strings(3, 10 + k) for k in range(100)]
    ):
        args = [a.replace("%", "") for a in args]
        line = wincmd_quote(microsoft_c_args(args))
        assert msc_argv(cmd_unescape(line)) == args, (i, args, line)


def test_what_cmd_cannot_carry_is_refused() -> None:
    for bad in ("a\nb", "a\rb", "a\0b", "%PATH%", "x%USERNAME%y"):
        with pytest.raises(ValueError):
            wincmd_quote(bad)
    assert wincmd_quote("100%") == "100%"  # a lone % expands nothing
    with pytest.raises(ValueError, match="exename"):
        remote_command("wincmd", ['C:\\a"b\\python.exe'], [], None)
    with pytest.raises(ValueError, match="dir"):
        remote_command("wincmd", ["python"], [], 'C:\\a"b')


def test_the_remote_command() -> None:
    argv = ["C:\\Py 3\\python.exe", "-m", "pydistributed.worker", "--bind-to", "0.0.0.0"]
    line = remote_command("wincmd", argv, [("A", "x&y"), ("B", "1 2")], "C:\\work dir")
    assert line == (
        "set A=x^&y&& set B=1 2&& "
        'pushd "C:\\work dir" && "C:\\Py 3\\python.exe" -m pydistributed.worker --bind-to 0.0.0.0'
    )
    # cmd.exe runs: the two sets, pushd, then the interpreter with exactly argv
    *sets, last = [cmd_unescape(c) for c in cmd_commands(line)]
    assert sets == ["set A=x&y", " set B=1 2", ' pushd "C:\\work dir" ']
    assert msc_argv(last) == argv


def test_the_cookie_alone_goes_on_stdin() -> None:
    env = [("A", "1"), ("B", "2")]
    assert stdin_payload(env, "c" * 16, "wincmd") == b"c" * 16 + b"\n"
    assert stdin_payload(env, "c" * 16, "posix") == b"1\n2\n" + b"c" * 16 + b"\n"
    assert "c" * 16 not in remote_command("wincmd", ["python"], env, None)


def test_probe_command() -> None:
    code = 'import os; print(os.cpu_count() or "1")'
    line = probe_command("wincmd", "python", code)
    assert msc_argv(cmd_unescape(line)) == ["python", "-c", code]
