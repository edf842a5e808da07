"""Running ``engine.cli.main`` in the test's process, with its output captured by ``capsys``."""

from engine.cli import main


def run_cli(capsys, *args):
    """main(args) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def ok_cli(capsys, *args):
    """main(args) that must succeed: its stdout."""
    rc, out, err = run_cli(capsys, *args)
    assert rc == 0, (out, err)
    return out
