"""Writing outputs: atomic and fsynced, one named error on a full disk, colliding names and bad fps refused before
anything is written."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image


def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    import stat as stat_

    from animatezero.io import write_json

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat_.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_json(tmp_path / "run.json", {"status": "done"})
    assert False in synced and True in synced  # the file's data, then the folder entry of the rename


# ----------------------------------------------------------------------------------- disk full
def test_disk_full_while_writing_an_output_is_a_named_error(tmp_path, monkeypatch):
    import errno

    from animatezero.io import OutputWriteError, save_image
    from experiments.runs import OutputDirError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OutputWriteError, match="No space left on device; free some disk space") as info:
        save_image(torch.zeros(3, 8, 8), tmp_path / "image.png")
    assert isinstance(info.value, OutputDirError)  # the CLI prints it as one line, exit status 2
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


# ----------------------------------------------------------------------------------- output names
@pytest.mark.parametrize(
    "files, match",
    [
        ({"gif": "frames/x.gif", "frames": "frames"}, "lies inside paths.run_files.frames"),
        ({"video": "out.mp4", "gif": "./out.mp4"}, "are the same path"),
    ],
)
def test_colliding_output_names_are_refused(tmp_path, files, match):
    from experiments.runs import OutputPathError, distinct_outputs

    with pytest.raises(OutputPathError, match=match):
        distinct_outputs({k: tmp_path / v for k, v in files.items()})
    distinct_outputs({"gif": tmp_path / "frames.gif", "frames": tmp_path / "frames"})  # side by side is fine


@pytest.mark.parametrize("fps", [-5, 0, 2.5])
def test_bad_fps_fails_before_writing(tmp_path, fps):
    from animatezero.io import save_video
    from animatezero.results import VideoResult

    video = VideoResult(frames=torch.zeros(2, 3, 8, 8), latents=torch.zeros(1, 4, 2, 1, 1), prompt="", seed=0)
    with pytest.raises(ValueError, match="fps must be a whole number"):
        video.save(tmp_path / "v.gif", fps=fps)
    with pytest.raises(ValueError, match="fps must be a whole number"):
        save_video(video.frames, tmp_path / "v.mp4", fps=fps)
    assert list(tmp_path.iterdir()) == []
