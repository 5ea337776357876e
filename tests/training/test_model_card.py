"""The model card's training line counts the data a time-budgeted run actually saw."""

from __future__ import annotations

from training.model_card import _epochs


def _training(epochs_completed, steps, batch_size=256, train_size=55000, world_size=1):
    return {
        "epochs_completed": epochs_completed,
        "steps": steps,
        "train_size": train_size,
        "world_size": world_size,
        "config": {"batch_size": batch_size},
    }


def test_a_run_stopped_mid_epoch_reports_the_passes_it_made():
    # 55,000 // 256 = 214 steps per epoch; 605 steps are 2.83 passes, 2 of them complete
    assert _epochs(_training(2, 605)) == "2.8 epochs (2 complete)"


def test_whole_epochs_are_reported_as_before():
    assert _epochs(_training(3, 3 * 214)) == "3 epochs"


def test_data_parallel_ranks_share_the_epoch():
    # two ranks: 55,000 // 2 // 256 = 107 steps per epoch on each
    assert _epochs(_training(1, 160, world_size=2)) == "1.5 epochs (1 complete)"


def test_missing_fields_fall_back_to_the_count():
    assert _epochs({"epochs_completed": 4}) == "4 epochs"
