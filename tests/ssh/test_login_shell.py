"""A host whose login shell is csh/tcsh, reached with the default ``shell="posix"``: the launch
error says to use ``shell="csh"``.

The host is a second real sshd with the session's keys whose ``ForceCommand`` hands the
client's command to tcsh, which is what sshd does for a user whose login shell is tcsh
(``$SHELL -c COMMAND``), without adding a user to this machine.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from pydistributed import LaunchError, addprocs, remotecall_fetch, rmprocs, workers
from pydistributed.managers.ssh import SSHLaunchError

from .conftest import SSHD, Sshd, free_port, stop, wait_listening

TCSH = shutil.which("tcsh")
pytestmark = pytest.mark.skipif(TCSH is None, reason="no tcsh here (apt-get install tcsh)")


@pytest.fixture
def tcsh_host(sshd: Sshd) -> Iterator[str]:
    """The spec of an sshd whose sessions run their command with tcsh."""
    port = free_port()
    conf = sshd.dir / f"sshd_config_tcsh_{port}"
    conf.write_text(
        (sshd.dir / "sshd_config")
        .read_text()
        .replace(f"Port {sshd.port}\n", f"Port {port}\n")
        .replace(f"PidFile {sshd.dir}/sshd.pid", f"PidFile {sshd.dir}/sshd_tcsh_{port}.pid")
        + f'ForceCommand exec {TCSH} -c "$SSH_ORIGINAL_COMMAND"\n'
    )
    with open(sshd.dir / f"sshd_tcsh_{port}.log", "ab") as logf:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
        )
    try:
        assert wait_listening("127.0.0.1", port, proc, 10), "sshd did not start"
        yield f"{sshd.user}@127.0.0.1:{port}"
    finally:
        stop(proc)


def test_posix_commands_to_a_csh_login_suggest_shell_csh(
    sshd: Sshd, tcsh_host: str, cleanup_workers: list[int]
) -> None:
    with pytest.raises(LaunchError) as info:
        addprocs([tcsh_host], **sshd.kw)
    err = info.value
    assert isinstance(err, SSHLaunchError) and err.started == []
    assert "use shell='csh'" in str(err), str(err)
    assert "no Python at" not in str(err)
    assert "Command not found." in err.output or "Unmatched" in err.output
    # and with shell="csh" the same host runs workers
    (w,) = addprocs([tcsh_host], shell="csh", **sshd.kw)
    cleanup_workers.append(w)
    assert remotecall_fetch(lambda: 6 * 7, w) == 42
    rmprocs(w, waitfor=30)
    assert w not in workers()
