"""Running a Hydra entry point inside a test as its console script would."""

import sys

from hydra.core.global_hydra import GlobalHydra


def run_main(main, argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``main`` with ``sys.argv = argv``; returns (exit status, stdout, stderr). Hydra's global state is cleared
    after, so the next test composes afresh."""
    monkeypatch.setattr(sys, "argv", argv)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out, out.err
