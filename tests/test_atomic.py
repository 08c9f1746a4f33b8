import pytest

from radnet_tf import atomic


def test_file_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "table.csv"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"  # the old file is untouched, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "table.csv"
    ]


def test_temporary_name_keeps_the_suffix_and_is_unique(tmp_path):
    a, b = atomic.temp_name(tmp_path / "final.keras"), atomic.temp_name(tmp_path / "final.keras")
    assert (
        a != b
        and a.name.endswith("final.keras")
        and a.name.startswith(atomic.TMP_PREFIX)
        and a.parent == tmp_path
    )


def test_folder_replaces_an_older_folder_and_stale_leftovers_are_cleaned(tmp_path):
    target = tmp_path / "3"
    (target).mkdir()
    (target / "old.txt").write_text("x")
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("y")
    assert [p.name for p in target.iterdir()] == ["saved_model.pb"]
    leftover = atomic.temp_name(tmp_path / "4")
    leftover.mkdir()
    (atomic.temp_name(tmp_path / "x.csv")).write_text("z")
    atomic.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]
