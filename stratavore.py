"""Entry point of the stratavore command (also PyInstaller's)."""

from stratavore.entry import main

if __name__ == "__main__":
    main()
