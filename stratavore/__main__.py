from stratavore.cli import main

main()
