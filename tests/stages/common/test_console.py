"""Progress bars written to a log file become lines (stages/common/console.py), driven by a real tqdm bar."""

import io

from stages.common.console import ProgressLines


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bar_in_a_log_is_a_line_per_interval_and_its_final_state():
    from tqdm import tqdm

    out, clock = io.StringIO(), Clock()
    stream = ProgressLines(out, every=30, clock=clock)
    stream.write("before the bar\n")
    with tqdm(total=100, desc="answers", file=stream, mininterval=0, miniters=1) as bar:
        for _ in range(100):
            clock.now += 1  # 100 updates over 100 s: lines at 0 s, 30 s, 60 s, 90 s, then the final one
            bar.update(1)
    stream.write("after the bar\n")
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text, "no carriage return reaches the log"
    assert lines[0] == "before the bar" and lines[-1] == "after the bar", "plain text passes as it is"
    progress = lines[1:-1]
    assert all(line.startswith("answers:") for line in progress)
    assert 4 <= len(progress) <= 6 and len(set(progress)) == len(progress), progress
    assert "100/100" in progress[-1], "the bar's final state is always written"


def test_a_log_line_in_the_middle_of_a_bar_stays_whole():
    out = io.StringIO()
    stream = ProgressLines(out, every=30, clock=Clock())
    stream.write("\rstep 1/3")
    stream.write("\rstep 2/3")
    stream.write("[evaluate] sft: done\n")
    assert out.getvalue() == "step 1/3\nstep 2/3\n[evaluate] sft: done\n", "the bar's state, then the log line"
