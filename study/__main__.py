"""python -m study: the study's command line (study/cli.py), with a user's
mistake as one line on stderr (cli.run)."""
from cli import run
from study.cli import main

run(main)
