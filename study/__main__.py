"""python -m study: the study's command line (study/cli.py), with a user's
mistake as one line on stderr (data/cli.py's run)."""
from data.cli import run
from study.cli import main

run(main)
