"""SSH workers without I/O: machine specs, machine files, and the remote command line.

A machine spec is Julia's ``[user@]host[:port] [bind_addr[:port]]``: where to log in, and
optionally the address the worker listens at (and other workers dial). ``addprocs`` takes a
spec, ``(spec, count)`` or ``(spec, "auto")``; a machine file (``pydist --machine-file``) has one
``[count*]spec`` per line.

The remote command is a string that the remote user's login shell parses (ssh joins its
arguments into one string): for ``shell="posix"`` it is ``sh -l -c CMDS`` quoted once more, for
``shell="csh"`` a csh script, for ``shell="wincmd"`` a ``cmd.exe`` line (Windows' OpenSSH
server runs commands with ``cmd /c``). Nothing secret is in it: with posix and csh, the values
of ``env`` and then the cookie are sent on the ssh session's standard input, one line each, and
read there by the shell (``IFS= read -r NAME`` / ``setenv NAME "$<"``) before it ``exec``s the
worker, which reads the cookie line itself. So neither appears in any command line (``ps``) on
either host, nor the cookie in the worker's environment. ``cmd.exe`` has no dependable way to
read a line of a pipe into a variable (``set /p`` reads a whole buffer from a pipe), so with
wincmd the ``env`` values are on the command line, as Julia puts them for every shell, and only
the cookie goes on standard input.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Machine",
    "csh_quote",
    "microsoft_c_args",
    "normalize_machines",
    "parse_machine",
    "parse_machine_file",
    "remote_command",
    "ssh_destination",
    "stdin_payload",
    "wincmd_quote",
]

SHELLS = ("posix", "csh", "wincmd")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")


@dataclass(frozen=True)
class Machine:
    """One parsed spec: ``user@host:port`` to log in to, ``bind`` for the worker (or None)."""

    spec: str
    user: str | None
    host: str
    port: int | None
    bind: str | None

    @property
    def destination(self) -> str:
        return ssh_destination(self.user, self.host)


def ssh_destination(user: str | None, host: str) -> str:
    return f"{user}@{host}" if user else host


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid machine spec {spec!r}: bad port {text!r} (1-65535)")
    return int(text)


def parse_machine(spec: str) -> Machine:
    """``"[user@]host[:port] [bind_addr[:port]]"`` -> :class:`Machine` (IPv6 as ``[::1]:22``).

    Raises:
        ValueError: the spec is empty or malformed (the message quotes it).
    """
    if not isinstance(spec, str):
        raise TypeError(f"a machine spec is a string, not {type(spec).__name__}")
    parts = spec.split()
    if not parts or len(parts) > 2:
        raise ValueError(
            f"invalid machine spec {spec!r}: expected '[user@]host[:port] [bind_addr[:port]]'"
        )
    login = parts[0]
    user, at, rest = login.rpartition("@")
    if at and not user:
        raise ValueError(f"invalid machine spec {spec!r}: empty user name")
    port: int | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"invalid machine spec {spec!r}: unclosed '[' in the host")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"invalid machine spec {spec!r}: junk after ']'")
            port = _port(tail[1:], spec)
    else:
        host, colon, p = rest.partition(":")
        if colon:
            if ":" in p:
                raise ValueError(
                    f"invalid machine spec {spec!r}: write an IPv6 address as [addr]:port"
                )
            port = _port(p, spec)
    if not host or any(c in host for c in "/'\"\\`$;&|<>"):
        raise ValueError(f"invalid machine spec {spec!r}: bad host name {host!r}")
    bind = None
    if len(parts) == 2:
        bind = parts[1]
        bhost, colon, bport = bind.rpartition(":") if not bind.endswith("]") else ("", "", "")
        if colon and bhost and not bhost.endswith(":"):
            _port(bport, spec)
    return Machine(spec, user or None, host, port, bind)


def normalize_machines(machines: Iterable[Any]) -> list[tuple[Machine, int | str]]:
    """addprocs' ``machines`` -> ``[(Machine, count or "auto")]``, one entry per distinct spec
    (counts of a repeated spec add up, as in Julia; ``"auto"`` wins).

    Raises:
        ValueError, TypeError: a malformed spec or count.
    """
    counts: dict[str, int | str] = {}
    parsed: dict[str, Machine] = {}
    for m in machines:
        if isinstance(m, tuple):
            if len(m) != 2:
                raise ValueError(f"a machine is a spec or (spec, count), not {m!r}")
            spec, cnt = m
        else:
            spec, cnt = m, 1
        machine = parse_machine(spec)
        key = " ".join(spec.split())
        parsed.setdefault(key, machine)
        if cnt == "auto" or cnt == ":auto":
            counts[key] = "auto"
        elif isinstance(cnt, int) and not isinstance(cnt, bool) and cnt >= 0:
            prev = counts.get(key, 0)
            counts[key] = prev if prev == "auto" else int(prev) + cnt
        else:
            raise ValueError(f"a worker count is an int >= 0 or 'auto', not {cnt!r} ({spec!r})")
    return [(parsed[k], c) for k, c in counts.items()]


def parse_machine_file(text: str, name: str = "machine file") -> list[tuple[str, int | str]]:
    """Julia's machine file: ``[count*][user@]host[:port] [bind_addr[:port]]`` per line; ``#``
    starts a comment, blank lines are ignored. ``[(spec, count)]`` in order; ``count`` is a
    positive int, or ``"auto"`` for ``auto*spec`` (one worker per CPU of the host: Julia's
    ``load_machine_file`` reads a count that is not all digits as a Symbol, ``:auto``).

    Raises:
        ValueError: a malformed line; the message names the file, the line number and the line.
    """
    out: list[tuple[str, int | str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        count: int | str = 1
        spec = line
        star = line.find("*")
        if star >= 0:
            head, spec = line[:star].strip(), line[star + 1 :].strip()
            if head == "auto":
                count = "auto"
            elif not head.isdigit() or int(head) < 1:
                raise ValueError(
                    f"{name}, line {number}: {raw.strip()!r}: the count before '*' must be a "
                    "positive integer or auto"
                )
            else:
                count = int(head)
        try:
            parse_machine(spec)
        except ValueError as e:
            raise ValueError(f"{name}, line {number}: {raw.strip()!r}: {e}") from None
        out.append((" ".join(spec.split()), count))
    return out


# -- quoting -------------------------------------------------------------------------------


def csh_quote(arg: str) -> str:
    """Quote ``arg`` for csh/tcsh, as Julia's ``shell_escape_csh`` does: runs of text in
    single quotes, or in double quotes when they hold a single quote but none of ``$ ` "``;
    a newline becomes backslash-newline, and ``!`` becomes ``\\!`` (csh expands history even
    in ``csh -c`` and inside quotes; Julia's version misses this)."""
    if re.fullmatch(r"[A-Za-z0-9/._-]+", arg):
        return arg
    out: list[str] = []
    i = 0
    while True:
        rest = arg[i:]
        for pattern, q in (
            (r"[^']*\Z", "'"),
            (r'[^$`"]*\Z', '"'),
            (r"[^']+", "'"),
            (r'[^$`"]+', '"'),
        ):
            m = re.match(pattern, rest, re.S)
            if m is not None:
                text = m.group().replace("\n", "\\\n").replace("!", "\\!")
                out.append(q + text + q)
                i += len(m.group())
                break
        if i >= len(arg):
            return "".join(out)
        if m is None:  # not reached for any str, kept from Julia's algorithm
            out.append("\\'")
            i += 1


def microsoft_c_args(args: Iterable[str]) -> str:
    """Join ``args`` into one command line that a Windows program's C runtime splits back into
    the same ``argv`` (Julia's ``escape_microsoft_c_args``): an argument that is empty or holds
    a space, tab or double quote goes in double quotes, its double quotes become ``\\"`` and
    the backslashes before a double quote (or before the closing quote) are doubled."""
    out = []
    for arg in args:
        if arg and not re.search(r'[ \t"]', arg):
            out.append(arg)
            continue
        escaped = re.sub(r'(\\*)"', r'\1\1\\"', arg)
        escaped = re.sub(r"(\\+)\Z", r"\1\1", escaped)
        out.append(f'"{escaped}"')
    return " ".join(out)


def wincmd_quote(text: str) -> str:
    """Escape ``text`` for ``cmd.exe`` (Julia's ``shell_escape_wincmd``): a span between two
    double quotes is left as it is; elsewhere ``" ( ) ! ^ < > & |`` get a caret, and so does a
    leading ``@``. ``%`` cannot be escaped on a ``cmd /c`` line: it is refused where it would
    expand a variable (``%NAME%``).

    Raises:
        ValueError: a CR, LF or NUL (cmd.exe cannot carry them), or ``%NAME%``.
    """
    if re.search(r"[\r\n\0]", text):
        raise ValueError(f"{text!r}: cmd.exe cannot carry a newline or NUL")
    if re.search(r"%[^%\s]+%", text):
        raise ValueError(f"{text!r}: cmd.exe would expand %...% in it (it cannot be escaped)")
    out = ["^"] if text.startswith("@") else []
    i = 0
    while i < len(text):
        c = text[i]
        j = text.find('"', i + 1) if c == '"' else -1
        if j >= 0:
            out.append(text[i : j + 1])
            i = j + 1
            continue
        out.append("^" + c if c in '"()!^<>&|' else c)
        i += 1
    return "".join(out)


def _check_env(env: Sequence[tuple[str, str]]) -> None:
    for name, value in env:
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(
                f"the value of environment variable {name!r} holds a newline or NUL: SSH "
                "workers receive env values as lines on the ssh session's standard input"
            )


def remote_command(
    shell: str,
    argv: Sequence[str],
    env: Sequence[tuple[str, str]],
    dir: str | None,
    default_dir: str | None = None,
) -> str:
    """The string ssh runs on the remote host: go to ``dir``, read ``env``'s values from
    standard input (in order, one line each), ``exec argv``.

    ``dir`` must exist (the launch fails otherwise); ``default_dir`` is tried and skipped if
    missing.

    Raises:
        ValueError: an unknown shell, an invalid variable name, a value with a newline.
    """
    _check_env(env)
    if shell == "posix":
        q = shlex.quote
        lines = []
        if dir:
            lines.append(f"cd -- {q(dir)} || exit 1")
        elif default_dir:
            lines.append(f"cd -- {q(default_dir)} 2>/dev/null")
        for name, _ in env:
            lines.append(f"IFS= read -r {name}; export {name}")
        lines.append("exec " + shlex.join(argv))
        return shlex.join(["sh", "-l", "-c", "\n".join(lines)])
    if shell == "csh":
        lines = []
        if dir:
            lines.append(f"cd {csh_quote(dir)}")
        elif default_dir:
            lines.append(f"if ( -d {csh_quote(default_dir)} ) cd {csh_quote(default_dir)}")
        for name, _ in env:
            lines.append(f'setenv {name} "$<"')
        lines.append("exec " + " ".join(csh_quote(a) for a in argv))
        return "\n".join(lines)
    if shell == "wincmd":
        return _wincmd_command(argv, env, dir)
    raise ValueError(f"shell must be one of {', '.join(map(repr, SHELLS))}, not {shell!r}")


def _wincmd_command(argv: Sequence[str], env: Sequence[tuple[str, str]], dir: str | None) -> str:
    """``set NAME=VALUE&& ... pushd "DIR" && EXE ARGS`` for cmd.exe (as Julia builds it)."""
    if argv and '"' in argv[0]:
        raise ValueError(f"exename {argv[0]!r}: a double quote cannot be passed to cmd.exe")
    command = wincmd_quote(microsoft_c_args(argv))
    if dir:
        if '"' in dir:
            raise ValueError(f"dir {dir!r}: a double quote cannot be passed to cmd.exe")
        command = f"pushd {wincmd_quote(chr(34) + dir + chr(34))} && {command}"
    sets = "".join(f"set {name}={wincmd_quote(value)}&& " for name, value in env)
    return sets + command


def probe_command(shell: str, exename: str, code: str) -> str:
    """The remote command that runs ``exename -c code`` (e.g. to count the host's CPUs)."""
    if shell == "csh":
        return " ".join(csh_quote(a) for a in (exename, "-c", code))
    if shell == "wincmd":
        return wincmd_quote(microsoft_c_args([exename, "-c", code]))
    return shlex.join([exename, "-c", code])


def stdin_payload(
    env: Sequence[tuple[str, str]], cookie: str, shell: str = "posix", blob: bytes | None = None
) -> bytes:
    """What the ssh session's standard input carries: env values (not with wincmd, whose
    command line holds them), the packages' archive (``bootstrap=True``: a header line with
    its length, then the zip), then the cookie."""
    _check_env(env)
    values = "" if shell == "wincmd" else "".join(f"{value}\n" for _, value in env)
    shipped = b"" if blob is None else b"PYDIST-BOOTSTRAP %d\n" % len(blob) + blob
    return values.encode() + shipped + (cookie + "\n").encode("ascii")
