"""pgdet's checkpointer: atomic last_checkpoint tag, no arbitrary unpickling of .pth files."""
import os
import pickle

import pytest
import torch

from pgdet.engine.checkpoint import PGCheckpointer


class _Payload:
    """Any class: a pickle may name it, weights_only loading must refuse to build it."""


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        PGCheckpointer(torch.nn.Linear(2, 2))._load_file(str(path))


def test_own_checkpoint_round_trips_and_tag_is_replaced_atomically(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saver = PGCheckpointer(model, str(tmp_path), optimizer=optimizer)
    saver.save("model_0000001", iteration=1)
    saver.save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]
    loaded = PGCheckpointer(torch.nn.Linear(3, 2), str(tmp_path))._load_file(str(tmp_path / "model_0000002.pth"))
    assert loaded["iteration"] == 2
    torch.testing.assert_close(loaded["model"]["weight"], model.state_dict()["weight"])
    assert "momentum_buffer" in str(loaded["optimizer"]["state"])
