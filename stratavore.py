"""Entry point of the stratavore command (also PyInstaller's)."""

from stratavore.cli import main

if __name__ == "__main__":
    main()
