"""Progress lines: one format (percent, seconds), an updating line on a terminal, whole
rate-limited lines in a log, and the trainer's events."""

import io

import torch

from benchmark import progress
from benchmark.progress import Console, GridClock, duration, event_line
from benchmark.train import TrainConfig, Trainer


def epoch_event(epoch=3, epochs=12):
    return {"kind": "epoch", "phase": "pipd selective", "epoch": epoch, "epochs": epochs,
            "eta_s": 270.0, "metrics": {"epoch": epoch, "train_loss": 0.5582, "train_acc": 0.7546,
                                        "lr": 0.01, "seconds": 51.8, "img_per_s": 386.0,
                                        "ca": 0.769, "asr": 0.021, "tpr": float("nan")}}


def test_event_line_is_percent_and_readable():
    line = event_line(epoch_event())
    assert line.startswith("pipd selective 3/12")
    for part in ("train loss 0.558", "acc 75.5%", "CA 76.9%", "ASR 2.1%", "52 s (386 img/s)",
                 "ETA 4.5 min"):
        assert part in line, (part, line)
    assert "nan" not in line and "{" not in line and "lr" not in line
    assert "ETA" not in event_line(epoch_event(epoch=12))  # nothing left in the phase
    step = {"kind": "step", "phase": "train", "epoch": 2, "epochs": 20, "step": 40, "steps": 157,
            "eta_s": 7300.0}
    assert event_line(step) == "train 2/20  step 40/157  ETA 2.0 h"
    assert (duration(42), duration(210), duration(7200)) == ("42 s", "3.5 min", "2.0 h")


def test_console_in_a_log_prints_whole_lines_rate_limited():
    out = io.StringIO()
    sink = Console(out, tty=False, interval=3600)
    step = {"kind": "step", "phase": "train", "epoch": 1, "epochs": 2, "step": 1, "steps": 9,
            "eta_s": 5.0}
    sink(step)
    sink({**step, "step": 2})  # within the interval: dropped
    sink(epoch_event())
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.count("\n") == 2 and "step 1/9" in text and "step 2/9" not in text


def test_console_on_a_terminal_updates_one_line():
    out = io.StringIO()
    sink = Console(out, tty=True)
    step = {"kind": "step", "phase": "train", "epoch": 1, "epochs": 2, "step": 1, "steps": 9,
            "eta_s": 5.0}
    sink(step)
    sink({**step, "step": 2})
    sink(epoch_event())
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")


def test_grid_clock_estimates_the_rest():
    clock = GridClock(4)
    assert clock.tick().startswith("1/4 done, ") and "ETA" in clock.tick()
    clock.tick()
    assert "ETA" not in clock.tick()


def test_trainer_emits_one_epoch_event_per_epoch():
    events = []
    previous = progress.set_sink(events.append)
    try:
        trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", threads=1)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.01, augment=False)
        trainer.fit(model, images, torch.randint(0, 2, (64,)), cfg, desc="probe")
    finally:
        progress.set_sink(previous)
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[0]["phase"] == "probe"
    assert epochs[0]["eta_s"] > 0 and epochs[-1]["eta_s"] == 0
    assert 0.0 <= epochs[-1]["metrics"]["train_acc"] <= 1.0


def test_a_phase_without_seconds_times_its_epochs():
    events = []
    previous = progress.set_sink(events.append)
    try:
        phase = progress.Phase("Dynamic mask network", 2, 10)
        phase.epoch_done(1, {"mask_density": 0.05})
        phase.epoch_done(2, {"mask_density": 0.03, "seconds": 7.0})
    finally:
        progress.set_sink(previous)
    first, second = (e["metrics"]["seconds"] for e in events)
    assert 0 <= first < 5 and second == 7.0  # measured when missing, kept when given
    assert "?" not in event_line(events[0]) and "mask density 5.0%" in event_line(events[0])
