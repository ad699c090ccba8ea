"""The command-line entry point's shared behaviour (each command's own tests live with its module)."""

import argparse
import os
import signal
import time

from pairedit import cli


def test_sigterm_stops_a_command_like_ctrl_c(monkeypatch, capsys):
    """`kill PID` raises KeyboardInterrupt inside the command, so its checkpoint-on-interrupt code runs."""
    seen = []

    def command(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            seen.append("checkpoint saved")
            raise

    def parser():
        p = argparse.ArgumentParser()
        p.set_defaults(func=command)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main([]) == 130
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == ["checkpoint saved"]
    assert "interrupted" in capsys.readouterr().err
