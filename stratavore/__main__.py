from stratavore.entry import main

main()
