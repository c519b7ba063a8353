"""Coverage-guided fuzz harnesses (atheris) for the feed's decoders and session parsers.

Each `fuzz_*.py` module is a script (`python tests/fuzz/fuzz_frames.py -max_total_time=600`) and
a library: its `check(data)` states the contract for one input, which tests/test_fuzz.py replays
over the committed vectors without atheris. docs/fuzzing.md has the commands.
"""
