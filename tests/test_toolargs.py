"""megakd.toolargs: a tool's flags come from its settings dataclass, and bad values are one-line
errors naming the flag (the dump, MiniPLM scoring and selection all parse this way)."""

from dataclasses import dataclass
from typing import List, Literal, Optional

import pytest

from megakd.errors import ConfigError
from megakd.miniplm.score import ScoreArgs
from megakd.miniplm.select import SelectArgs
from megakd.teacher.dump import DumpArgs
from megakd.toolargs import ToolArgs


@dataclass
class Demo(ToolArgs):
    source: str
    """where it comes from"""
    prefixes: List[str]
    """one or more"""
    mode: Literal["a", "b"] = "a"
    """which way"""
    count: int = 3
    """how many"""
    name: Optional[str] = None
    """optional"""
    plot: bool = True
    """a picture"""

    def validate(self):
        if self.count < 1:
            raise ConfigError(f"--count must be >= 1, got {self.count}")


def test_flags_follow_the_fields():
    args = Demo.parse(["--source", "s", "--prefixes", "p", "q", "--mode", "b", "--count", "5",
                       "--no-plot"])
    assert args == Demo("s", ["p", "q"], "b", 5, None, False)
    assert Demo.parse(["--source", "s", "--prefixes", "p"]) == Demo("s", ["p"])
    help_text = Demo.parser().format_help()
    assert "where it comes from" in help_text and "(default: 3)" in help_text


@pytest.mark.parametrize("argv", [["--prefixes", "p"], ["--source", "s", "--prefixes", "p", "--mode", "c"],
                                  ["--source", "s", "--prefixes", "p", "--count", "x"]])
def test_missing_or_ill_typed_flags_are_argparse_errors(argv):
    with pytest.raises(SystemExit):
        Demo.parse(argv)


def test_validate_runs_on_parse():
    with pytest.raises(ConfigError, match="--count must be >= 1"):
        Demo.parse(["--source", "s", "--prefixes", "p", "--count", "0"])


@pytest.mark.parametrize("cls,argv,message", [
    (DumpArgs, ["--data-prefix", "d", "--tokenizer", "t", "--output", "o"], "exactly one of --teacher"),
    (DumpArgs, ["--data-prefix", "d", "--tokenizer", "t", "--output", "o", "--teacher", "c",
                "--top-p", "0"], "--top-p must be in"),
    (ScoreArgs, ["--teacher", "t", "--reference", "r", "--data-prefix", "d", "--output", "o",
                 "--shard-size", "0"], "--shard-size must be >= 1"),
    (SelectArgs, ["--scores", "s", "--data-prefix", "d", "--output-prefix", "o", "--ratio", "2"],
     "--ratio must be in"),
], ids=["dump-teacher", "dump-top-p", "score-shard", "select-ratio"])
def test_each_tool_validates_its_flags(cls, argv, message):
    with pytest.raises(ConfigError, match=message):
        cls.parse(argv)
