from gradgate.cli import main

main()
