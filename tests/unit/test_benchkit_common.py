"""tools/benchkit/common.py's pure helpers (no GPU)."""
from benchkit.common import in_turns


def test_turns_rotate_the_first_and_keep_the_order():
    names = ["ours", "deepgemm", "cublas"]
    assert [in_turns(names, r) for r in range(4)] == [names, ["deepgemm", "cublas", "ours"],
                                                      ["cublas", "ours", "deepgemm"], names]
    assert in_turns([], 2) == [] and names == ["ours", "deepgemm", "cublas"]
