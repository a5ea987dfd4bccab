"""pgdet-table1's stages shared between processes: ``--only`` cells run side by side in one
experiment folder never train the same stage twice."""
import fcntl
import json
import threading

from pgdet.engine import experiment


def test_a_stage_another_process_is_training_is_waited_for_then_reused(tmp_path, monkeypatch,
                                                                       capsys):
    """Two ``--only`` cells started side by side both need the missing baseline: the second must
    not train it again into the same folder. Another process holding ``<folder>.lock`` (here:
    this test, through its own file descriptor) makes run_stage wait; once that process has
    finished the stage and let go, run_stage reuses its result and trains nothing."""
    trained = []
    monkeypatch.setattr(experiment, "_run_logged", lambda *a, **k: trained.append(a))
    out = tmp_path / "baseline"
    holder = open(str(out) + ".lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        experiment.run_stage("baseline", "b.yaml", str(out))))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not trained, "it waits; it does not train a second copy"
    out.mkdir()
    (out / experiment.DONE_FILE).write_text(json.dumps({"AP": 41.5}))
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    waiter.join(timeout=10.0)
    assert not waiter.is_alive() and not trained and result == {"AP": 41.5}
    assert "another process is running this stage" in capsys.readouterr().out
