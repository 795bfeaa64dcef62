"""`python -m posttrain` runs the command line."""

from posttrain.cli import main

main()
